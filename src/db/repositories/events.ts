import { sql } from 'kysely'
import type { DbOrTrx } from '../index.js'
import type { EventRow, EventTable } from '../types.js'
import type { Insertable } from 'kysely'

/** Inserts the events in one statement; their seqs, in the order of rows. */
export async function insertEvents (db: DbOrTrx, rows: Array<Insertable<EventTable>>): Promise<number[]> {
  const inserted = await db.insertInto('events').values(rows).returning('seq').execute()
  // Rows get their seqs in the order they are listed; RETURNING's own order is not promised.
  return inserted.map((r) => Number(r.seq)).sort((x, y) => x - y)
}

/**
 * PostgreSQL: inserts the events like insertEvents, after locking the widget's row until the
 * transaction ends, in the same statement. Event ids must become visible in id order, or a reader
 * polling "after id N" could pass over one still being committed: holding the widget's row from
 * before the ids are drawn until commit serialises the widget's event writers. `FOR NO KEY UPDATE`
 * is the lock an update of the row would take, without writing a new version of it; the rows take
 * their ids only once the lock is held (no row is formed before `locked` is read), in the order
 * listed.
 */
export async function insertEventsLocked (trx: DbOrTrx, widgetId: string, rows: Array<Insertable<EventTable>>): Promise<number[]> {
  const column = <K extends keyof EventTable>(key: K) => rows.map((r) => r[key])
  const inserted = await sql<{ seq: number }>`
    with locked as (select id from widgets where id = ${widgetId} for no key update)
    insert into events (widget_id, type, agent_id, payload, created_at)
    select locked.id, e.type, e.agent_id, e.payload, e.created_at
    from locked, unnest(${column('type')}::text[], ${column('agent_id')}::text[], ${column('payload')}::text[], ${column('created_at')}::bigint[])
      with ordinality as e(type, agent_id, payload, created_at, n)
    order by e.n
    returning seq`.execute(trx)
  if (inserted.rows.length !== rows.length) throw new Error(`widget ${widgetId} not found: its events were not written`)
  return inserted.rows.map((r) => Number(r.seq)).sort((x, y) => x - y)
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
