import { sql, type ExpressionBuilder, type Insertable } from 'kysely'
import type { DbOrTrx, DialectName } from '../index.js'
import { compiledOnce } from '../compiled.js'
import { databaseMs } from '../database-clock.js'
import type { Database, WebhookAttemptRow, WebhookAttemptTable, WebhookDeliveryRow, WebhookDeliveryTable, WebhookEndpointRow } from '../types.js'

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

/**
 * Deletes the widget's endpoint with its deliveries and their attempts, in the caller's transaction;
 * false (nothing deleted) if the widget has no such endpoint.
 */
export async function deleteEndpoint (db: DbOrTrx, dialect: DialectName, widgetId: string, id: string): Promise<boolean> {
  // Another widget's endpoint, deliveries included, is not touched. On PostgreSQL its row is locked
  // first, as claimDelivery locks it before a delivery's: in the other order the two deadlock.
  const found = db.selectFrom('webhook_endpoints').select('id').where('widget_id', '=', widgetId).where('id', '=', id)
  if (await (dialect === 'postgres' ? found.forUpdate() : found).executeTakeFirst() === undefined) return false
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
 * is sent, so a receiver gets events in order even across retries. The head is usually the
 * delivery on its way, if any (claimed, so not listed); when it is not (a re-send of an older one
 * while a newer one is being sent), claimDelivery refuses it until that attempt ends. That look is
 * not made here: with a backlog behind a failing endpoint, PostgreSQL may run it for every pending
 * row rather than for the heads only (70 s a call with 10,000 queued, in a review's reproduction).
 */
export async function dueDeliveries (db: DbOrTrx, dialect: DialectName, nowMs: number, limit: number): Promise<WebhookDeliveryRow[]> {
  const now = databaseMs(dialect)
  // The heads first (one look down the queue's index), then which of them are due: asking "is it
  // the head?" of every pending row instead read the endpoint's queue once per row of it (92 ms a
  // call with 10,000 queued behind one failing endpoint, against 2-5 ms this way).
  const heads = db.selectFrom('webhook_deliveries').select(['endpoint_id', (eb) => eb.fn.min('event_seq').as('seq')])
    .where('status', '=', 'pending').groupBy('endpoint_id').as('h')
  return await db.selectFrom(heads)
    .innerJoin('webhook_deliveries as d', (join) => join.onRef('d.endpoint_id', '=', 'h.endpoint_id').onRef('d.event_seq', '=', 'h.seq'))
    .selectAll('d')
    .where('d.status', '=', 'pending')
    .where('d.next_attempt_at', '<=', nowMs)
    .where('d.locked_until', '<', now)
    .orderBy('d.next_attempt_at')
    .limit(limit)
    .execute()
}

/** The pending deliveries of the same endpoint as `d`, the delivery being claimed. */
function othersPending (eb: ExpressionBuilder<Database & { d: WebhookDeliveryTable }, 'd'>) {
  return eb.selectFrom('webhook_deliveries as o').select(sql`1`.as('one'))
    .where('o.status', '=', 'pending')
    .whereRef('o.endpoint_id', '=', 'd.endpoint_id')
}

/** A delivery's claim: who holds it, and until when (the database's clock). */
export interface DeliveryClaim {
  owner: string
  lockedUntil: number
}

/**
 * Takes the delivery for this attempt for lockMs (by the database's clock; when it is due is judged
 * by nowMs, the instance's clock, which set it); undefined when it is
 * no longer due: another instance took it or sent it since the list was read, an older delivery of
 * its endpoint became pending (a re-send), or another of the endpoint's deliveries is on its way.
 * On PostgreSQL the endpoint's row is locked first, so two instances claiming two deliveries of one
 * endpoint at the same moment take turns, and the second sees the first's claim.
 */
export async function claimDelivery (
  db: DbOrTrx, dialect: DialectName, delivery: Pick<WebhookDeliveryRow, 'id' | 'endpoint_id'>, nowMs: number, lockMs: number, owner: string
): Promise<DeliveryClaim | undefined> {
  const claim = async (trx: DbOrTrx) => {
    const now = databaseMs(dialect)
    const row = await trx.updateTable('webhook_deliveries as d').set({ locked_until: sql<number>`${now} + ${lockMs}`, claim_owner: owner })
      .where('d.id', '=', delivery.id).where('d.status', '=', 'pending').where('d.locked_until', '<', now).where('d.next_attempt_at', '<=', nowMs)
      // Only pending deliveries are ever claimed (a finished one's claim is cleared with it): each
      // look is a probe of an index on pending deliveries (the queue's, and the claims'), away from
      // the finished ones an endpoint keeps and from a long queue behind a failing endpoint.
      .where((eb) => eb.not(eb.exists(othersPending(eb).whereRef('o.event_seq', '<', 'd.event_seq'))))
      .where((eb) => eb.not(eb.exists(othersPending(eb).where('o.locked_until', '>=', now).whereRef('o.id', '<>', 'd.id'))))
      .returning('locked_until')
      .executeTakeFirst()
    return row === undefined ? undefined : { owner, lockedUntil: Number(row.locked_until) }
  }
  if (dialect === 'sqlite') return await claim(db)
  return await db.transaction().execute(async (trx) => {
    await trx.selectFrom('webhook_endpoints').select('id').where('id', '=', delivery.endpoint_id).forNoKeyUpdate().execute()
    return await claim(trx)
  })
}

/**
 * Ends an attempt, in the caller's transaction: the delivery's next state, and the attempt's record
 * in the log, numbered after those before it. Only the claim's holder changes the delivery's state:
 * an attempt that outlived its claim (another attempt holds the delivery now) only counts itself
 * and leaves the rest to that one. A delivery sent again by hand while the attempt was on its way
 * (requeueDelivery moved its next_attempt_at from `claimed.next_attempt_at`) keeps its place in the
 * queue: only its attempt count and claim change. Nothing is recorded for a delivery deleted
 * meanwhile with its endpoint.
 */
export async function finishAttempt (
  trx: DbOrTrx,
  attempt: Omit<Insertable<WebhookAttemptTable>, 'attempt'>,
  claimed: Pick<WebhookDeliveryRow, 'id' | 'next_attempt_at'> & { claim: DeliveryClaim },
  changes: { status: WebhookDeliveryRow['status'], next_attempt_at: number, updated_at: number }
): Promise<void> {
  // The claim is ours while it names us and still has our deadline: an instance of a version before
  // claim_owner that took the delivery since changed the deadline but not the name.
  const ours = trx.updateTable('webhook_deliveries')
    .where('id', '=', claimed.id).where('claim_owner', '=', claimed.claim.owner).where('locked_until', '=', claimed.claim.lockedUntil)
  const counted = sql<number>`attempts + 1`
  const released = { attempts: counted, locked_until: 0, claim_owner: null }
  const numbered = await ours.set({ ...changes, ...released }).where('next_attempt_at', '=', claimed.next_attempt_at).returning('attempts').executeTakeFirst() ??
    await ours.set({ updated_at: changes.updated_at, ...released }).returning('attempts').executeTakeFirst() ??
    await trx.updateTable('webhook_deliveries').set({ attempts: counted }).where('id', '=', claimed.id).returning('attempts').executeTakeFirst()
  if (numbered === undefined) return
  await trx.insertInto('webhook_attempts').values({ ...attempt, attempt: Number(numbered.attempts) })
    .onConflict((oc) => oc.columns(['delivery_id', 'attempt']).doNothing()).execute()
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

