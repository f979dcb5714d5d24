import type { Kysely } from 'kysely'

/**
 * Which attempt holds a webhook delivery's claim (a random name per claim; null when none holds it,
 * and for claims made before this column). An attempt that outlived its claim (its instance stalled,
 * or its outcome could not be written at once) finds another attempt holding the delivery and leaves
 * the delivery to it, instead of marking it finished under it. See claimDelivery and finishAttempt.
 */
export function webhookClaimOwner () {
  return {
    async up (db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('webhook_deliveries').addColumn('claim_owner', 'text').execute()
    },
    async down (db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('webhook_deliveries').dropColumn('claim_owner').execute()
    }
  }
}
