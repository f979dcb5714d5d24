import type { DbOrTrx } from '../index.js'
import type { IdempotencyKeyRow } from '../types.js'

export async function findIdempotencyKey (db: DbOrTrx, widgetId: string, key: string): Promise<IdempotencyKeyRow | undefined> {
  return await db.selectFrom('idempotency_keys').selectAll().where('widget_id', '=', widgetId).where('key', '=', key).executeTakeFirst()
}

/** Claims the key for a first request; false when it was already claimed (the primary key decides races). */
export async function claimIdempotencyKey (db: DbOrTrx, widgetId: string, key: string, requestHash: string, now: number): Promise<boolean> {
  const result = await db.insertInto('idempotency_keys')
    .values({ widget_id: widgetId, key, request_hash: requestHash, status_code: null, response: null, created_at: now })
    .onConflict((oc) => oc.columns(['widget_id', 'key']).doNothing())
    .executeTakeFirst()
  return Number(result.numInsertedOrUpdatedRows ?? 0n) > 0
}

export async function completeIdempotencyKey (db: DbOrTrx, widgetId: string, key: string, statusCode: number, response: string): Promise<void> {
  await db.updateTable('idempotency_keys').set({ status_code: statusCode, response })
    .where('widget_id', '=', widgetId).where('key', '=', key).execute()
}

export async function releaseIdempotencyKey (db: DbOrTrx, widgetId: string, key: string): Promise<void> {
  await db.deleteFrom('idempotency_keys').where('widget_id', '=', widgetId).where('key', '=', key).where('status_code', 'is', null).execute()
}

export async function purgeIdempotencyKeys (db: DbOrTrx, olderThan: number): Promise<void> {
  await db.deleteFrom('idempotency_keys').where('created_at', '<', olderThan).execute()
}
