import type { Kysely } from 'kysely'

/**
 * Which request holds an Idempotency-Key's claim (a random name per request; null once answered,
 * and for claims made before this column). A claim is released only by its own request, so a
 * release retried after a failure, or one made at shutdown, never frees another request's claim.
 * See IdempotencyKeys.
 */
export function idempotencyClaimOwner () {
  return {
    async up (db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('idempotency_keys').addColumn('claim_owner', 'text').execute()
    },
    async down (db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('idempotency_keys').dropColumn('claim_owner').execute()
    }
  }
}
