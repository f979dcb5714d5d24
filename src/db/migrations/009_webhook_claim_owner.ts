import type { Kysely } from 'kysely'

/**
 * Which attempt holds a webhook delivery's claim (a random name per claim; null when none holds it,
 * and for claims made before this column). An attempt that outlived its claim (its instance stalled,
 * or its outcome could not be written at once) finds another attempt holding the delivery and leaves
 * the delivery to it, instead of marking it finished under it. See claimDelivery and finishAttempt.
 * And an index for the claim's look for the endpoint's delivery on its way.
 */
export function webhookClaimOwner () {
  return {
    async up (db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('webhook_deliveries').addColumn('claim_owner', 'text').execute()
      // A claim looks for a delivery of the same endpoint already on its way: a probe, however long
      // the endpoint's queue.
      await db.schema.createIndex('webhook_deliveries_claims_idx').on('webhook_deliveries').columns(['status', 'endpoint_id', 'locked_until']).execute()
    },
    async down (db: Kysely<unknown>): Promise<void> {
      await db.schema.dropIndex('webhook_deliveries_claims_idx').execute()
      await db.schema.alterTable('webhook_deliveries').dropColumn('claim_owner').execute()
    }
  }
}
