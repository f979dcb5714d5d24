import type { CompiledQuery } from 'kysely'
import type { DbOrTrx } from '../index.js'
import type { IdempotencyKeyRow } from '../types.js'

export async function findIdempotencyKey (db: DbOrTrx, widgetId: string, key: string): Promise<IdempotencyKeyRow | undefined> {
  return await db.selectFrom('idempotency_keys').selectAll().where('widget_id', '=', widgetId).where('key', '=', key).executeTakeFirst()
}

/**
 * Claims the key for a first request; false when it is claimed already (the primary key decides
 * races). A claim made before `staleBefore` and never completed is taken over: the request that
 * made it can no longer be running (its process stopped on the way).
 */
export async function claimIdempotencyKey (db: DbOrTrx, widgetId: string, key: string, requestHash: string, now: number, staleBefore: number, owner: string): Promise<boolean> {
  const result = await db.insertInto('idempotency_keys')
    .values({ widget_id: widgetId, key, request_hash: requestHash, status_code: null, response: null, created_at: now, claim_owner: owner })
    .onConflict((oc) => oc.columns(['widget_id', 'key'])
      .doUpdateSet({ request_hash: requestHash, created_at: now, claim_owner: owner })
      .where('idempotency_keys.status_code', 'is', null)
      .where('idempotency_keys.created_at', '<', staleBefore))
    .executeTakeFirst()
  return Number(result.numInsertedOrUpdatedRows ?? 0n) > 0
}

/**
 * The answer kept for the key, as a statement to run in the transaction of the write it answers
 * (answeredByCommit); now is when it was answered, from which it is kept IDEMPOTENCY_TTL_SECONDS.
 */
export function completeIdempotencyKeyQuery (db: DbOrTrx, widgetId: string, key: string, requestHash: string, now: number, statusCode: number, response: string): CompiledQuery {
  return db.insertInto('idempotency_keys')
    .values({ widget_id: widgetId, key, request_hash: requestHash, status_code: statusCode, response, created_at: now })
    .onConflict((oc) => oc.columns(['widget_id', 'key']).doUpdateSet({ request_hash: requestHash, status_code: statusCode, response, created_at: now, claim_owner: null }))
    .compile()
}

/** Frees a claim that was never answered, if this owner (one request) still holds it. */
export async function releaseIdempotencyKey (db: DbOrTrx, widgetId: string, key: string, owner: string): Promise<void> {
  await db.deleteFrom('idempotency_keys').where('widget_id', '=', widgetId).where('key', '=', key)
    .where('status_code', 'is', null).where('claim_owner', '=', owner)
    .execute()
}

/** Frees the unanswered claims of these owners (requests), wherever they are. */
export async function releaseIdempotencyClaims (db: DbOrTrx, owners: readonly string[]): Promise<void> {
  if (owners.length === 0) return
  await db.deleteFrom('idempotency_keys').where('claim_owner', 'in', owners).where('status_code', 'is', null).execute()
}

/**
 * Forgets answers kept since before olderThan, and claims never answered made before
 * claimsOlderThan: a claim younger than that may belong to a request still running, whose retries
 * must keep hearing 409 (see idempotencyClaimSeconds), however short the answers are kept.
 */
export async function purgeIdempotencyKeys (db: DbOrTrx, olderThan: number, claimsOlderThan: number): Promise<void> {
  await db.deleteFrom('idempotency_keys').where('created_at', '<', olderThan)
    .where((eb) => eb.or([eb('status_code', 'is not', null), eb('created_at', '<', claimsOlderThan)]))
    .execute()
}
