import type { Kysely } from 'kysely'
import type { DialectName } from '../index.js'

/** Widgets, their tokens, agents and avatar records. Portable across SQLite and PostgreSQL. */
export function initial (dialect: DialectName) {
  return {
    async up (db: Kysely<unknown>): Promise<void> {
      await db.schema.createTable('widgets')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .execute()

      await db.schema.createTable('tokens')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('widget_id', 'text', (c) => c.notNull().references('widgets.id'))
        .addColumn('token_hash', 'text', (c) => c.notNull().unique())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('revoked_at', 'bigint')
        .execute()

      await db.schema.createTable('avatars')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('widget_id', 'text', (c) => c.notNull().references('widgets.id'))
        .addColumn('sha256', 'text', (c) => c.notNull())
        .addColumn('ext', 'text', (c) => c.notNull())
        .addColumn('mime_type', 'text', (c) => c.notNull())
        .addColumn('size', 'bigint', (c) => c.notNull())
        .addColumn('width', 'integer', (c) => c.notNull())
        .addColumn('height', 'integer', (c) => c.notNull())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('source_url', 'text')
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .execute()
      await db.schema.createIndex('avatars_sha256_idx').on('avatars').column('sha256').execute()

      await db.schema.createTable('agents')
        .addColumn('seq', dialect === 'postgres' ? 'bigserial' : 'integer', (c) =>
          dialect === 'postgres' ? c.primaryKey() : c.primaryKey().autoIncrement())
        .addColumn('id', 'text', (c) => c.notNull().unique())
        .addColumn('widget_id', 'text', (c) => c.notNull().references('widgets.id'))
        .addColumn('service_user_id', 'text', (c) => c.notNull())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('active', 'integer', (c) => c.notNull())
        .addColumn('avatar_id', 'text', (c) => c.references('avatars.id'))
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .addUniqueConstraint('agents_widget_service_user_id_key', ['widget_id', 'service_user_id'])
        .execute()
      // Serves the newest-first list: (widget, created_at desc, seq desc).
      await db.schema.createIndex('agents_widget_created_idx').on('agents')
        .columns(['widget_id', 'created_at', 'seq']).execute()
    },

    async down (db: Kysely<unknown>): Promise<void> {
      await db.schema.dropTable('agents').execute()
      await db.schema.dropTable('avatars').execute()
      await db.schema.dropTable('tokens').execute()
      await db.schema.dropTable('widgets').execute()
    }
  }
}
