import type { Insertable } from 'kysely'
import type { DbOrTrx } from '../index.js'
import { compiledOnce } from '../compiled.js'
import type { WebhookAttemptRow, WebhookAttemptTable, WebhookDeliveryRow, WebhookDeliveryTable, WebhookEndpointRow } from '../types.js'

export async function insertEndpoint (db: DbOrTrx, row: WebhookEndpointRow): Promise<void> {
  await db.insertInto('webhook_endpoints').values(row).execute()
}

/** The widget's webhook endpoints, oldest first (compiled once: every write on SQLite reads them). */
export async function listEndpoints (db: DbOrTrx, widgetId: string): Promise<WebhookEndpointRow[]> {
  const query = compiledOnce(db, 'listEndpoints', [widgetId], (v) =>
    db.selectFrom('webhook_endpoints').selectAll().where('widget_id', '=', v(0)).orderBy('created_at').orderBy('id'))
  return (await db.executeQuery(query)).rows
}

export async function findEndpoint (db: DbOrTrx, widgetId: string, id: string): Promise<WebhookEndpointRow | undefined> {
  return await db.selectFrom('webhook_endpoints').selectAll().where('widget_id', '=', widgetId).where('id', '=', id).executeTakeFirst()
}

export async function findEndpointById (db: DbOrTrx, id: string): Promise<WebhookEndpointRow | undefined> {
  return await db.selectFrom('webhook_endpoints').selectAll().where('id', '=', id).executeTakeFirst()
}

/** Deletes the widget's endpoint with its deliveries and their attempts; false (nothing deleted) if the widget has no such endpoint. */
export async function deleteEndpoint (db: DbOrTrx, widgetId: string, id: string): Promise<boolean> {
  // Another widget's endpoint, deliveries included, is not touched.
  if (await findEndpoint(db, widgetId, id) === undefined) return false
  await db.deleteFrom('webhook_attempts').where('delivery_id', 'in', db.selectFrom('webhook_deliveries').select('id').where('endpoint_id', '=', id)).execute()
  await db.deleteFrom('webhook_deliveries').where('endpoint_id', '=', id).execute()
  const result = await db.deleteFrom('webhook_endpoints').where('widget_id', '=', widgetId).where('id', '=', id).executeTakeFirst()
  return Number(result.numDeletedRows) > 0
}

export async function insertDeliveries (db: DbOrTrx, rows: Array<Insertable<WebhookDeliveryTable>>): Promise<void> {
  if (rows.length > 0) await db.insertInto('webhook_deliveries').values(rows).execute()
}

/**
 * Deliveries due now that head their endpoint's queue: per endpoint only the oldest pending event
 * is sent, so a receiver gets events in order even across retries.
 */
export async function dueDeliveries (db: DbOrTrx, nowMs: number, limit: number): Promise<WebhookDeliveryRow[]> {
  return await db.selectFrom('webhook_deliveries as d').selectAll()
    .where('d.status', '=', 'pending')
    .where('d.next_attempt_at', '<=', nowMs)
    .where('d.locked_until', '<', nowMs)
    .where('d.event_seq', '=', (eb) => eb.selectFrom('webhook_deliveries as h')
      .select((e) => e.fn.min('h.event_seq').as('seq'))
      .whereRef('h.endpoint_id', '=', 'd.endpoint_id')
      .where('h.status', '=', 'pending'))
    .orderBy('d.next_attempt_at')
    .limit(limit)
    .execute()
}

/** Takes the delivery for this instance until lockUntil; false when another instance took it first. */
export async function claimDelivery (db: DbOrTrx, id: string, nowMs: number, lockUntil: number): Promise<boolean> {
  // Re-checks what made it due: another instance may have attempted it since the list was read.
  const result = await db.updateTable('webhook_deliveries').set({ locked_until: lockUntil })
    .where('id', '=', id).where('status', '=', 'pending').where('locked_until', '<', nowMs).where('next_attempt_at', '<=', nowMs)
    .executeTakeFirst()
  return Number(result.numUpdatedRows) > 0
}

/**
 * Ends an attempt, in the caller's transaction: the delivery's next state, and the attempt's record
 * in the log (once: an attempt recorded already, by a claim that outlived its lock, is not recorded
 * again; nor one of a delivery deleted meanwhile with its endpoint). A delivery sent again by hand
 * while the attempt was on its way (requeueDelivery moved its next_attempt_at from
 * `claimed.next_attempt_at`) keeps its place in the queue: only its attempt count and lock change.
 */
export async function finishAttempt (
  trx: DbOrTrx,
  attempt: Insertable<WebhookAttemptTable>,
  claimed: Pick<WebhookDeliveryRow, 'id' | 'next_attempt_at'>,
  changes: { status: WebhookDeliveryRow['status'], attempts: number, next_attempt_at: number, updated_at: number }
): Promise<void> {
  const finished = await trx.updateTable('webhook_deliveries').set({ ...changes, locked_until: 0 })
    .where('id', '=', claimed.id).where('next_attempt_at', '=', claimed.next_attempt_at)
    .executeTakeFirst()
  if (Number(finished.numUpdatedRows) === 0) {
    const counted = await trx.updateTable('webhook_deliveries').set({ attempts: changes.attempts, updated_at: changes.updated_at, locked_until: 0 })
      .where('id', '=', claimed.id)
      .executeTakeFirst()
    if (Number(counted.numUpdatedRows) === 0) return
  }
  await trx.insertInto('webhook_attempts').values(attempt).onConflict((oc) => oc.columns(['delivery_id', 'attempt']).doNothing()).execute()
}

/** Forgets deliveries finished (succeeded or failed) before `olderThanMs`, with their attempts. */
export async function purgeDeliveries (db: DbOrTrx, olderThanMs: number): Promise<void> {
  const finished = db.selectFrom('webhook_deliveries').select('id').where('updated_at', '<', olderThanMs).where('status', '<>', 'pending')
  await db.deleteFrom('webhook_attempts').where('delivery_id', 'in', finished).execute()
  await db.deleteFrom('webhook_deliveries').where('updated_at', '<', olderThanMs).where('status', '<>', 'pending').execute()
}

export async function listDeliveries (db: DbOrTrx, endpointId: string, limit: number): Promise<WebhookDeliveryRow[]> {
  return await db.selectFrom('webhook_deliveries').selectAll().where('endpoint_id', '=', endpointId)
    .orderBy('event_seq', 'desc').orderBy('created_at', 'desc').limit(limit).execute()
}

export async function findDelivery (db: DbOrTrx, endpointId: string, id: string): Promise<WebhookDeliveryRow | undefined> {
  return await db.selectFrom('webhook_deliveries').selectAll().where('endpoint_id', '=', endpointId).where('id', '=', id).executeTakeFirst()
}

export async function attemptsOf (db: DbOrTrx, deliveryIds: readonly string[]): Promise<WebhookAttemptRow[]> {
  if (deliveryIds.length === 0) return []
  return await db.selectFrom('webhook_attempts').selectAll().where('delivery_id', 'in', deliveryIds).orderBy('attempt').execute()
}

/**
 * Puts a delivery back in the queue to be sent again as soon as possible (a manual re-send).
 * An attempt in flight keeps its claim, so the delivery is never sent twice at once.
 */
export async function requeueDelivery (db: DbOrTrx, id: string, nowMs: number): Promise<void> {
  await db.updateTable('webhook_deliveries').set({ status: 'pending', next_attempt_at: nowMs, updated_at: nowMs }).where('id', '=', id).execute()
}

