import { sql } from 'kysely'
import type { Db } from '../index.js'

/** A key's total in its window, as all instances counted it. */
export interface WindowCount {
  key: string
  count: number
  /** When the window ends (Date.now() milliseconds). */
  endsAt: number
}

/**
 * PostgreSQL only. Adds this instance's requests to each key's count in the shared window and
 * answers the totals. A window that ended by `now` starts again with these requests, ending
 * `windowMs` after `now`. One statement for the lot; keys in order, so that two instances adding
 * the same keys lock their rows in the same order and never deadlock.
 */
export async function addToRateWindows (db: Db, counts: ReadonlyArray<{ key: string, count: number }>, now: number, windowMs: number): Promise<WindowCount[]> {
  if (counts.length === 0) return []
  const sorted = [...counts].sort((a, b) => a.key < b.key ? -1 : a.key > b.key ? 1 : 0)
  const { rows } = await sql<{ key: string, count: number, ends_at: number }>`
    insert into rate_limit_windows as w (key, ends_at, count)
    select t.key, ${now + windowMs}::bigint, t.count
    from unnest(${sorted.map((c) => c.key)}::text[], ${sorted.map((c) => c.count)}::bigint[]) with ordinality as t(key, count, n)
    order by t.n
    on conflict (key) do update set
      count = case when w.ends_at <= ${now}::bigint then excluded.count else w.count + excluded.count end,
      ends_at = case when w.ends_at <= ${now}::bigint then excluded.ends_at else w.ends_at end
    returning w.key, w.count, w.ends_at`.execute(db)
  return rows.map((r) => ({ key: r.key, count: Number(r.count), endsAt: Number(r.ends_at) }))
}

/** Forgets windows that ended before `before`: a key's next request starts a new one anyway. */
export async function purgeRateWindows (db: Db, before: number): Promise<void> {
  await db.deleteFrom('rate_limit_windows').where('ends_at', '<', before).execute()
}
