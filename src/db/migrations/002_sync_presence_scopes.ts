import { sql, type Kysely } from 'kysely'
import { searchableName } from '../../agents/search.js'

/**
 * What integrators need beyond the seed: a folded name for case-insensitive search, presence
 * expiry for heartbeats, a version for optimistic concurrency, token scopes, idempotency keys.
 */
export function syncPresenceScopes () {
  return {
    async up (db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('agents').addColumn('name_search', 'text', (c) => c.notNull().defaultTo('')).execute()
      await db.schema.alterTable('agents').addColumn('presence_expires_at', 'bigint').execute()
      await db.schema.alterTable('agents').addColumn('version', 'integer', (c) => c.notNull().defaultTo(1)).execute()
      const rows = await sql<{ seq: number, name: string }>`select seq, name from agents`.execute(db)
      for (const row of rows.rows) {
        await sql`update agents set name_search = ${searchableName(row.name)} where seq = ${row.seq}`.execute(db)
      }
      await db.schema.createIndex('agents_presence_idx').on('agents').columns(['status', 'presence_expires_at']).execute()
      await db.schema.createIndex('agents_widget_updated_idx').on('agents').columns(['widget_id', 'updated_at']).execute()

      await db.schema.alterTable('tokens').addColumn('scope', 'text', (c) => c.notNull().defaultTo('write')).execute()

      await db.schema.createTable('idempotency_keys')
        .addColumn('widget_id', 'text', (c) => c.notNull().references('widgets.id'))
        .addColumn('key', 'text', (c) => c.notNull())
        .addColumn('request_hash', 'text', (c) => c.notNull())
        .addColumn('status_code', 'integer')
        .addColumn('response', 'text')
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addPrimaryKeyConstraint('idempotency_keys_pkey', ['widget_id', 'key'])
        .execute()
      await db.schema.createIndex('idempotency_keys_created_idx').on('idempotency_keys').column('created_at').execute()

      // Avatar content no longer referenced, deleted from the file store once eligible_at passes.
      await db.schema.createTable('blob_gc')
        .addColumn('sha256', 'text', (c) => c.notNull())
        .addColumn('ext', 'text', (c) => c.notNull())
        .addColumn('eligible_at', 'bigint', (c) => c.notNull())
        .addPrimaryKeyConstraint('blob_gc_pkey', ['sha256', 'ext'])
        .execute()
    },

    async down (db: Kysely<unknown>): Promise<void> {
      await db.schema.dropTable('blob_gc').execute()
      await db.schema.dropTable('idempotency_keys').execute()
      await db.schema.alterTable('tokens').dropColumn('scope').execute()
      await db.schema.dropIndex('agents_widget_updated_idx').execute()
      await db.schema.dropIndex('agents_presence_idx').execute()
      await db.schema.alterTable('agents').dropColumn('version').execute()
      await db.schema.alterTable('agents').dropColumn('presence_expires_at').execute()
      await db.schema.alterTable('agents').dropColumn('name_search').execute()
    }
  }
}
