import { randomUUID } from 'node:crypto'
import type { DbOrTrx } from '../index.js'
import type { WidgetRow } from '../types.js'

export async function findWidgetByName (db: DbOrTrx, name: string): Promise<WidgetRow | undefined> {
  return await db.selectFrom('widgets').selectAll().where('name', '=', name).executeTakeFirst()
}

/** Returns the widget with this name, creating it first if needed (safe against a concurrent creator). */
export async function ensureWidget (db: DbOrTrx, name: string, now: number): Promise<WidgetRow> {
  await db.insertInto('widgets')
    .values({ id: randomUUID(), name, created_at: now })
    .onConflict((oc) => oc.column('name').doNothing())
    .execute()
  const row = await findWidgetByName(db, name)
  if (row === undefined) throw new Error(`widget ${name} vanished after insert`)
  return row
}
