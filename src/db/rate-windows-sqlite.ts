import fs from 'node:fs'
import path from 'node:path'
import SQLite from 'better-sqlite3'
import { whileBusy } from './index.js'
import type { WindowCount } from './repositories/rate-limits.js'

/**
 * Where processes on one SQLite database add up their rate-limit counts: a small SQLite file of its
 * own beside the database (`agentry.db` → `agentry.rate-limits.db`). Not the database itself: its
 * every commit would move the database's `data_version`, and every other process's read cache
 * would start afresh several times a second.
 */
export function rateWindowsFileOf (databaseFile: string): string {
  const dir = path.dirname(databaseFile)
  const base = path.basename(databaseFile)
  return path.join(dir, `${base.endsWith('.db') ? base.slice(0, -3) : base}.rate-limits.db`)
}

export interface SqliteRateWindows {
  add: (counts: ReadonlyArray<{ key: string, count: number }>, now: number, windowMs: number) => WindowCount[]
  close: () => void
}

/**
 * Opens (and makes, the first time) the rate-limit file. Counts need no durability: no flushes
 * (`synchronous=OFF`); a crash only restarts windows. No waiting for another process's lock
 * (`busy_timeout=0`): an exchange that meets it fails, and its counts go with the next.
 */
export async function openSqliteRateWindows (databaseFile: string): Promise<SqliteRateWindows> {
  const file = rateWindowsFileOf(databaseFile)
  fs.mkdirSync(path.dirname(file), { recursive: true })
  const db = new SQLite(file)
  try {
    db.pragma('busy_timeout = 0')
    await whileBusy(30_000, () => db.pragma('journal_mode = WAL'))
    db.pragma('synchronous = OFF')
    await whileBusy(30_000, () => db.exec('create table if not exists rate_limit_windows (key text primary key, ends_at integer not null, count integer not null) strict'))
  } catch (err) {
    db.close()
    throw err
  }
  const upsert = db.prepare<[{ key: string, endsAt: number, count: number, now: number }], { key: string, count: number, ends_at: number }>(
    `insert into rate_limit_windows (key, ends_at, count) values (@key, @endsAt, @count)
     on conflict (key) do update set
       count = case when ends_at <= @now then excluded.count else count + excluded.count end,
       ends_at = case when ends_at <= @now then excluded.ends_at else ends_at end
     returning key, count, ends_at`)
  const purge = db.prepare<[number]>('delete from rate_limit_windows where ends_at < ?')
  let purgedAt = 0
  const add = db.transaction((counts: ReadonlyArray<{ key: string, count: number }>, now: number, windowMs: number): WindowCount[] => {
    const totals = counts.map(({ key, count }) => {
      const row = upsert.get({ key, endsAt: now + windowMs, count, now }) as { key: string, count: number, ends_at: number }
      return { key: row.key, count: row.count, endsAt: row.ends_at }
    })
    // Windows that ended a window ago go, now and then: a key's next request starts a new one anyway.
    if (now - purgedAt >= windowMs) {
      purge.run(now - windowMs)
      purgedAt = now
    }
    return totals
  })
  return {
    // BEGIN IMMEDIATE: the write lock first, so a transaction never fails half way for it.
    add: (counts, now, windowMs) => add.immediate(counts, now, windowMs),
    close: () => { db.close() }
  }
}
