import type { Kysely } from 'kysely'
import type { DialectName } from '../index.js'

/** The event log, webhook endpoints, and their durable deliveries with every attempt. */
export function eventsWebhooks (dialect: DialectName) {
  const serial = dialect === 'postgres' ? 'bigserial' : 'integer'
  return {
    async up (db: Kysely<unknown>): Promise<void> {
      await db.schema.createTable('events')
        .addColumn('seq', serial, (c) => dialect === 'postgres' ? c.primaryKey() : c.primaryKey().autoIncrement())
        .addColumn('widget_id', 'text', (c) => c.notNull().references('widgets.id'))
        .addColumn('type', 'text', (c) => c.notNull())
        .addColumn('agent_id', 'text', (c) => c.notNull())
        .addColumn('payload', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .execute()
      await db.schema.createIndex('events_widget_seq_idx').on('events').columns(['widget_id', 'seq']).execute()
      await db.schema.createIndex('events_created_idx').on('events').column('created_at').execute()

      await db.schema.createTable('webhook_endpoints')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('widget_id', 'text', (c) => c.notNull().references('widgets.id'))
        .addColumn('url', 'text', (c) => c.notNull())
        .addColumn('secret', 'text', (c) => c.notNull())
        .addColumn('event_types', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .execute()
      await db.schema.createIndex('webhook_endpoints_widget_idx').on('webhook_endpoints').column('widget_id').execute()

      await db.schema.createTable('webhook_deliveries')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('endpoint_id', 'text', (c) => c.notNull().references('webhook_endpoints.id').onDelete('cascade'))
        .addColumn('event_seq', 'bigint', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('attempts', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('next_attempt_at', 'bigint', (c) => c.notNull())
        .addColumn('locked_until', 'bigint', (c) => c.notNull().defaultTo(0))
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .execute()
      await db.schema.createIndex('webhook_deliveries_queue_idx').on('webhook_deliveries').columns(['status', 'endpoint_id', 'event_seq']).execute()

      await db.schema.createTable('webhook_attempts')
        .addColumn('delivery_id', 'text', (c) => c.notNull().references('webhook_deliveries.id').onDelete('cascade'))
        .addColumn('attempt', 'integer', (c) => c.notNull())
        .addColumn('at', 'bigint', (c) => c.notNull())
        .addColumn('status_code', 'integer')
        .addColumn('error', 'text')
        .addColumn('duration_ms', 'integer', (c) => c.notNull())
        .addColumn('response_body', 'text')
        .addPrimaryKeyConstraint('webhook_attempts_pkey', ['delivery_id', 'attempt'])
        .execute()
    },

    async down (db: Kysely<unknown>): Promise<void> {
      await db.schema.dropTable('webhook_attempts').execute()
      await db.schema.dropTable('webhook_deliveries').execute()
      await db.schema.dropTable('webhook_endpoints').execute()
      await db.schema.dropTable('events').execute()
    }
  }
}
