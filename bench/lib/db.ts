import { createPgDatabase as createTestDatabase } from '../../test/helpers/stores.js'
import { createHash, randomBytes } from 'node:crypto'
import path from 'node:path'
import Database from 'better-sqlite3'
import pg from 'pg'
import { Kysely, SqliteDialect } from 'kysely'
import { findAgentQuery, findAgentsByIdsPreparable, listAgentsQuery } from '../../src/db/repositories/agents.js'
import type { Database as DatabaseSchema } from '../../src/db/types.js'
import { percentiles, type LatencyStats } from './load.js'

/** The UUID-shaped id of seeded agent number g: md5('bench-g'), computed alike in Node and PostgreSQL. */
export function seededId (g: number): string {
  const h = createHash('md5').update(`bench-${g}`).digest('hex')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
}

// The SQL texts below are compiled from the service's own query builders (src/db/repositories/agents.ts),
// so what is timed and explained here is what the service runs. Compiling needs no connection.
const compiler = new Kysely<DatabaseSchema>({ dialect: new SqliteDialect({ database: async () => { throw new Error('compile only') } }) })
/** Rows a page of 100 asks for: one more, to know whether there is a next page. */
const PAGE_ROWS = 101
/** The list endpoint's query, first page of 100 (it asks for limit + 1 rows, to know if there is a next page). */
export const LIST_SQL = listAgentsQuery(compiler, 'w', { limit: PAGE_ROWS }).compile().sql
/** A later page, for `?limit=100&cursor=...`; parameters: widget, createdAt, createdAt, seq. */
export const PAGE_SQL = listAgentsQuery(compiler, 'w', { limit: PAGE_ROWS, after: { createdAt: 0, seq: 0 } }).compile().sql
/** What GET /agents/:id runs on a read-cache miss (SQLite). */
export const GET_SQL = findAgentQuery(compiler, 'w', 'id').compile().sql
/** What GET /agents/:id runs on PostgreSQL, for the reads that arrive together; one parameter, the ids. */
export const GET_BATCH_SQL = findAgentsByIdsPreparable(compiler, []).compile().sql

export interface Plans {
  list: string[]
  page: string[]
  get: string[]
}

/** A list position: what a cursor encodes. */
export interface Position {
  createdAt: number
  seq: number
}

const pgParams = (q: string) => { let i = 0; return q.replace(/\?/g, () => `$${++i}`) }

/** Direct access to the service's database, for seeding at scale and timing the list query. */
export interface BenchDb {
  dialect: 'sqlite' | 'postgres'
  widgetId: string
  count: () => Promise<number>
  /** Inserts seeded agents count+1..size in bulk; returns seconds taken. */
  seedTo: (size: number) => Promise<number>
  /** Where seeded agent g sits in the list. */
  positionOf: (g: number) => Promise<Position>
  /**
   * LIST_SQL (no `after`) or PAGE_SQL (the page after `after`), ready to run once at a time on a
   * connection like the service's, warmed up; close() when done.
   */
  listQueryRunner: (after?: Position) => Promise<QueryRunner>
  plans: (after: Position) => Promise<Plans>
  close: () => Promise<void>
}

/** One query, run once per call; close() frees its connection. */
export interface QueryRunner {
  once: () => unknown
  /**
   * PostgreSQL only: the same query run once under EXPLAIN ANALYZE, giving what the database
   * itself took (its Execution Time, no round trip, no client) and the pages it touched.
   */
  inDatabase?: () => Promise<InDatabase>
  close: () => Promise<void>
}

/** One run of a query as the database saw it. */
export interface InDatabase {
  /** EXPLAIN ANALYZE's Execution Time, ms. */
  ms: number
  /** Buffer pages the plan's top node touched: shared hits and reads. */
  pages: number
}

/** Rounds timeListQueries splits its runs into, and the pause between two. */
export const QUERY_ROUNDS = 5
export const QUERY_ROUND_PAUSE_MS = 400

/**
 * Runs each query `iterations` times, in QUERY_ROUNDS rounds QUERY_ROUND_PAUSE_MS apart, the
 * queries taking turns within each round (in an order that alternates from round to round), and
 * gives each query's timings from its round with the lowest p50; milliseconds. On a shared 2-core
 * VM one query's time is bimodal (the same page measured 0.47 or 0.9-1.0 ms, whatever the roster's
 * size, for spells of a second or more), and interference only ever adds: the quietest round is the
 * query's own cost. Two queries compared (a page of a large roster and of a small one) are timed
 * in the same rounds, so that a spell slows both alike rather than one of them.
 */
export async function timeListQueries (iterations: number, runners: readonly QueryRunner[]): Promise<LatencyStats[]> {
  return await inQuietestRounds(iterations, runners, async (runner) => {
    const t = performance.now()
    const pending = runner.once()
    if (pending instanceof Promise) await pending
    return performance.now() - t
  })
}

/**
 * As timeListQueries, but each query's time is the database's own (QueryRunner.inDatabase): the
 * round trip to the database and the client's parsing of the rows left out, which on these hosts
 * are most of a list query's time and most of its noise. Also gives the most pages each touched.
 */
export async function timeListQueriesInDatabase (iterations: number, runners: readonly QueryRunner[]): Promise<Array<LatencyStats & { pages: number }>> {
  const pages = runners.map(() => 0)
  const stats = await inQuietestRounds(iterations, runners, async (runner, i) => {
    if (runner.inDatabase === undefined) throw new Error('this query cannot be timed in the database')
    const run = await runner.inDatabase()
    pages[i] = Math.max(pages[i] as number, run.pages)
    return run.ms
  })
  return stats.map((s, i) => ({ ...s, pages: pages[i] as number }))
}

async function inQuietestRounds (iterations: number, runners: readonly QueryRunner[], timeOnce: (runner: QueryRunner, index: number) => Promise<number>): Promise<LatencyStats[]> {
  const best: Array<LatencyStats | undefined> = runners.map(() => undefined)
  const perRound = Math.max(1, Math.ceil(iterations / QUERY_ROUNDS))
  for (let round = 0; round < QUERY_ROUNDS; round++) {
    if (round > 0) await new Promise((resolve) => setTimeout(resolve, QUERY_ROUND_PAUSE_MS))
    const order = runners.map((_, i) => i)
    if (round % 2 === 1) order.reverse()
    for (const i of order) {
      const runner = runners[i] as QueryRunner
      const times = new Float64Array(perRound)
      for (let k = 0; k < perRound; k++) times[k] = await timeOnce(runner, i)
      const stats = percentiles(times)
      const sofar = best[i]
      if (sofar === undefined || stats.p50 < sofar.p50) best[i] = stats
    }
  }
  return best as LatencyStats[]
}

const T0 = 1_700_000_000
// Eight agents a second: many agents share a created_at, so seq has to break ties, as in real use.
const createdAt = (g: number) => T0 + Math.floor(g / 8)

export function openSqlite (file: string): BenchDb {
  const db = new Database(file)
  db.pragma('busy_timeout = 10000')
  // Only this bulk-loading connection: no fsync per batch, a big page cache for the index inserts.
  db.pragma('synchronous = OFF')
  db.pragma('cache_size = -262144')
  const widget = db.prepare("select id from widgets where name = 'default'").get() as { id: string } | undefined
  if (widget === undefined) throw new Error('no "default" widget in the service database (was BOOTSTRAP_TOKEN set?)')
  const widgetId = widget.id
  // name_search (migration 002) is searchableName(name); for 'Agent 123' that is 'agent 123'.
  const columns = new Set((db.prepare('select name from pragma_table_info(\'agents\')').all() as Array<{ name: string }>).map((c) => c.name))
  const withSearch = columns.has('name_search')
  const insert = db.prepare(withSearch
    ? 'insert into agents (id, widget_id, service_user_id, name, name_search, status, active, avatar_id, created_at, updated_at) values (?, ?, ?, ?, ?, ?, 1, null, ?, ?)'
    : 'insert into agents (id, widget_id, service_user_id, name, status, active, avatar_id, created_at, updated_at) values (?, ?, ?, ?, ?, 1, null, ?, ?)')
  const insertBatch = db.transaction((from: number, to: number) => {
    for (let g = from; g <= to; g++) {
      const t = createdAt(g)
      const status = g % 2 === 0 ? 'online' : 'offline'
      if (withSearch) insert.run(seededId(g), widgetId, `bench-${g}`, `Agent ${g}`, `agent ${g}`, status, t, t)
      else insert.run(seededId(g), widgetId, `bench-${g}`, `Agent ${g}`, status, t, t)
    }
  })
  const countSync = () => (db.prepare('select count(*) as n from agents').get() as { n: number }).n
  return {
    dialect: 'sqlite',
    widgetId,
    count: async () => countSync(),
    seedTo: async (size) => {
      const start = performance.now()
      let next = countSync() + 1
      while (next <= size) {
        const to = Math.min(size, next + 49_999)
        insertBatch(next, to)
        next = to + 1
        // Yield between batches so the bench's own event loop stays responsive.
        await new Promise((resolve) => setImmediate(resolve))
      }
      db.pragma('wal_checkpoint(TRUNCATE)')
      return (performance.now() - start) / 1000
    },
    positionOf: async (g) => {
      const row = db.prepare('select created_at, seq from agents where id = ?').get(seededId(g)) as { created_at: number, seq: number } | undefined
      if (row === undefined) throw new Error(`seeded agent ${g} is not in the database`)
      return { createdAt: row.created_at, seq: row.seq }
    },
    listQueryRunner: async (after) => {
      // A fresh read-only connection with SQLite's default page cache, like the service's connection.
      const reader = new Database(file, { readonly: true })
      const stmt = reader.prepare(after === undefined ? LIST_SQL : PAGE_SQL)
      const params = after === undefined ? [widgetId, PAGE_ROWS] : [widgetId, after.createdAt, after.createdAt, after.seq, PAGE_ROWS]
      const once = () => {
        if (stmt.all(...params).length === 0) throw new Error('list query returned no rows')
      }
      for (let i = 0; i < 20; i++) once()
      return { once, close: async () => { reader.close() } }
    },
    plans: async (after) => {
      const explain = (q: string, ...params: Array<string | number>) =>
        (db.prepare(`explain query plan ${q}`).all(...params) as Array<{ detail: string }>).map((r) => r.detail)
      return {
        list: explain(LIST_SQL, widgetId, PAGE_ROWS),
        page: explain(PAGE_SQL, widgetId, after.createdAt, after.createdAt, after.seq, PAGE_ROWS),
        get: explain(GET_SQL, widgetId, seededId(1))
      }
    },
    close: async () => { db.close() }
  }
}

export async function openPostgres (url: string): Promise<BenchDb> {
  const client = new pg.Client({ connectionString: url, application_name: 'agentry-bench' })
  await client.connect()
  try {
    const w = await client.query<{ id: string }>("select id from widgets where name = 'default'")
    const widgetId = w.rows[0]?.id
    if (widgetId === undefined) throw new Error('no "default" widget in the service database (was BOOTSTRAP_TOKEN set?)')
    const pgList = pgParams(LIST_SQL)
    const pgPage = pgParams(PAGE_SQL)
    const pgGet = pgParams(GET_BATCH_SQL)
    const count = async () => Number((await client.query<{ n: string }>('select count(*) as n from agents')).rows[0]?.n ?? 0)
    return {
      dialect: 'postgres',
      widgetId,
      count,
      seedTo: async (size) => {
        const start = performance.now()
        const from = await count() + 1
        if (from <= size) {
          await client.query(
            `insert into agents (id, widget_id, service_user_id, name, name_search, status, active, avatar_id, created_at, updated_at)
             select md5('bench-' || g)::uuid::text, $1, 'bench-' || g, 'Agent ' || g, 'agent ' || g,
                    case when g % 2 = 0 then 'online' else 'offline' end, 1, null, $2::bigint + g / 8, $2::bigint + g / 8
             from generate_series($3::bigint, $4::bigint) as g`,
            [widgetId, T0, from, size])
          // Autovacuum would analyze a table after such a load; do it now rather than race it.
          await client.query('analyze agents')
        }
        return (performance.now() - start) / 1000
      },
      positionOf: async (g) => {
        const row = (await client.query<{ created_at: string, seq: string }>('select created_at, seq from agents where id = $1', [seededId(g)])).rows[0]
        if (row === undefined) throw new Error(`seeded agent ${g} is not in the database`)
        return { createdAt: Number(row.created_at), seq: Number(row.seq) }
      },
      listQueryRunner: async (after) => {
        const name = `bench_list_${randomBytes(4).toString('hex')}`
        const q = after === undefined
          ? { name, text: pgList, values: [widgetId, PAGE_ROWS] }
          : { name, text: pgPage, values: [widgetId, after.createdAt, after.createdAt, after.seq, PAGE_ROWS] }
        const once = async () => {
          if ((await client.query(q)).rowCount === 0) throw new Error('list query returned no rows')
        }
        // timing off: the clock is read once for the whole statement, not twice per row and node.
        const explained = { text: `explain (analyze, buffers, timing off, costs off) ${q.text}`, values: q.values }
        const inDatabase = async (): Promise<InDatabase> => {
          const plan = (await client.query<{ 'QUERY PLAN': string }>(explained)).rows.map((r) => r['QUERY PLAN'])
          return { ms: explainedMs(plan), pages: explainedPages(plan) }
        }
        for (let i = 0; i < 20; i++) await once()
        // The connection is the BenchDb's own, closed with it.
        return { once, inDatabase, close: async () => {} }
      },
      plans: async (after) => {
        const explain = async (q: string, params: unknown[]) =>
          (await client.query<{ 'QUERY PLAN': string }>(`explain (costs off) ${q}`, params)).rows.map((r) => r['QUERY PLAN'])
        return {
          list: await explain(pgList, [widgetId, PAGE_ROWS]),
          page: await explain(pgPage, [widgetId, after.createdAt, after.createdAt, after.seq, PAGE_ROWS]),
          get: await explain(pgGet, [[seededId(1), seededId(2), seededId(3)]])
        }
      },
      close: async () => { await client.end() }
    }
  } catch (err) {
    await client.end()
    throw err
  }
}

/** EXPLAIN ANALYZE's "Execution Time: 0.049 ms". */
function explainedMs (plan: readonly string[]): number {
  const line = plan.find((l) => l.startsWith('Execution Time:'))
  const ms = Number(/([\d.]+) ms/.exec(line ?? '')?.[1])
  if (!Number.isFinite(ms)) throw new Error(`no execution time in the plan: ${plan.join(' / ')}`)
  return ms
}

/** The pages the top node touched: its "Buffers: shared hit=9 read=1" (the first such line). */
function explainedPages (plan: readonly string[]): number {
  const line = plan.find((l) => l.trim().startsWith('Buffers:')) ?? ''
  const count = (kind: string) => Number(new RegExp(`shared[^,]*\\b${kind}=(\\d+)`).exec(line)?.[1] ?? 0)
  return count('hit') + count('read')
}

export function sqliteFile (dataDir: string): string {
  return path.join(dataDir, 'agentry.db')
}

/** A fresh database for one bench run (the test suite's helper, with a bench prefix). */
export async function createPgDatabase (adminUrl: string): Promise<{ url: string, name: string, drop: () => Promise<void> }> {
  return await createTestDatabase(adminUrl, 'agentry_bench')
}
