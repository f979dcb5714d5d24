import { sql, type CompiledQuery } from 'kysely'
import type { DbOrTrx } from '../index.js'
import { compiledOnce } from '../compiled.js'
import type { EventRow, EventTable } from '../types.js'
import type { Insertable } from 'kysely'

const EVENT_COLUMNS = ['widget_id', 'type', 'agent_id', 'payload', 'created_at'] as const

/** Inserts the events in one statement (compiled once per number of rows); their seqs, in the order of rows. */
export async function insertEvents (db: DbOrTrx, rows: Array<Insertable<EventTable>>): Promise<number[]> {
  const k = EVENT_COLUMNS.length
  const values = rows.flatMap((r) => EVENT_COLUMNS.map((c) => r[c]))
  const query = compiledOnce(db, `insertEvents:${rows.length}`, values, (v) =>
    db.insertInto('events').values(rows.map((_, r) => Object.fromEntries(EVENT_COLUMNS.map((c, i) => [c, v(r * k + i)])) as unknown as Insertable<EventTable>)).returning('seq'))
  const inserted = (await db.executeQuery(query)).rows
  // Rows get their seqs in the order they are listed; RETURNING's own order is not promised.
  return inserted.map((r) => Number(r.seq)).sort((x, y) => x - y)
}

/**
 * PostgreSQL: the statement that inserts the events like insertEvents, and a pending delivery of
 * each to every webhook endpoint of the widget that wants its type (no round trip to read the
 * endpoints first). It locks the widget's row until the transaction ends, before the events take
 * their ids: event ids must become visible in id order, or a reader polling "after id N" could
 * pass over one still being committed, so the widget's event writers take turns from there to
 * their commit. `FOR NO KEY UPDATE` is the lock an update of the row would take, without writing a
 * new version of it; no event row is formed before `locked` is read (the widget's row is there: the
 * agent's row refers to it), and they take their ids in the order listed. Delivery ids are `msg_`
 * and a random UUID's 32 hex digits, as insertDeliveries' callers make them. An endpoint being
 * deleted at that moment (its row locked by the deletion) gets no delivery: without `skip locked`
 * the write would wait for the deletion and then fail on the delivery's foreign key.
 */
export function insertEventsAndDeliveries (trx: DbOrTrx, widgetId: string, rows: Array<Insertable<EventTable>>, nowMs: number): CompiledQuery {
  const column = <K extends keyof EventTable>(key: K) => rows.map((r) => r[key])
  return sql`
    with locked as (select id from widgets where id = ${widgetId} for no key update),
    ev as (
      insert into events (widget_id, type, agent_id, payload, created_at)
      select locked.id, e.type, e.agent_id, e.payload, e.created_at
      from locked, unnest(${column('type')}::text[], ${column('agent_id')}::text[], ${column('payload')}::text[], ${column('created_at')}::bigint[])
        with ordinality as e(type, agent_id, payload, created_at, n)
      order by e.n
      returning seq, type
    ),
    deliveries as (
      insert into webhook_deliveries (id, endpoint_id, event_seq, status, next_attempt_at, created_at, updated_at)
      select 'msg_' || replace(gen_random_uuid()::text, '-', ''), ep.id, ev.seq, 'pending', ${nowMs}::bigint, ${nowMs}::bigint, ${nowMs}::bigint
      from ev join webhook_endpoints ep on ep.widget_id = ${widgetId}
        and (ep.event_types::jsonb ? '*' or ep.event_types::jsonb ? ev.type)
      for key share of ep skip locked
    )
    select seq from ev`.compile(trx)
}

export async function listEventsAfter (db: DbOrTrx, widgetId: string, afterSeq: number, limit: number): Promise<EventRow[]> {
  return await db.selectFrom('events').selectAll()
    .where('widget_id', '=', widgetId)
    .where('seq', '>', afterSeq)
    .orderBy('seq')
    .limit(limit)
    .execute()
}

export async function findEvent (db: DbOrTrx, seq: number): Promise<EventRow | undefined> {
  return await db.selectFrom('events').selectAll().where('seq', '=', seq).executeTakeFirst()
}

export async function latestEventSeq (db: DbOrTrx, widgetId: string): Promise<number> {
  const row = await db.selectFrom('events').select((eb) => eb.fn.max('seq').as('seq')).where('widget_id', '=', widgetId).executeTakeFirst()
  return Number(row?.seq ?? 0)
}

/** Forgets events older than the retention window, except those a webhook still has to deliver. */
export async function purgeEvents (db: DbOrTrx, olderThan: number): Promise<void> {
  await db.deleteFrom('events')
    .where('created_at', '<', olderThan)
    .where((eb) => eb.not(eb.exists(
      eb.selectFrom('webhook_deliveries').select(sql`1`.as('one')).whereRef('webhook_deliveries.event_seq', '=', 'events.seq').where('webhook_deliveries.status', '=', 'pending')
    )))
    .execute()
}
