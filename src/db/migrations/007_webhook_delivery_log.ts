import type { Kysely } from 'kysely'

/**
 * The delivery log read by endpoint (newest events first) without a scan of every delivery, and
 * finished deliveries found by age, to be forgotten after EVENTS_RETENTION_SECONDS (see
 * purgeDeliveries).
 */
export function webhookDeliveryLog () {
  return {
    async up (db: Kysely<unknown>): Promise<void> {
      await db.schema.createIndex('webhook_deliveries_endpoint_idx').on('webhook_deliveries').columns(['endpoint_id', 'event_seq']).execute()
      await db.schema.createIndex('webhook_deliveries_updated_idx').on('webhook_deliveries').column('updated_at').execute()
    },
    async down (db: Kysely<unknown>): Promise<void> {
      await db.schema.dropIndex('webhook_deliveries_updated_idx').execute()
      await db.schema.dropIndex('webhook_deliveries_endpoint_idx').execute()
    }
  }
}
