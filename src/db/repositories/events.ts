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
