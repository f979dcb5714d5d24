import fs from 'node:fs'
import path from 'node:path'
import { CompiledQuery, Kysely, PostgresDialect, SqliteAdapter, SqliteDialect, SqliteDriver, sql, type DatabaseConnection, type DialectAdapter, type Driver, type QueryResult, type SqliteDialectConfig, type SqliteDatabase, type Transaction } from 'kysely'
import SQLite from 'better-sqlite3'
import type pg from 'pg'
import type { DatabaseTarget } from '../config/index.js'
import type { Database } from './types.js'
import { groupCommit, type Transact } from './group-commit.js'
import { pipelinedTransact } from './pipelined.js'

export type { Transact } from './group-commit.js'

export type Db = Kysely<Database>
export type DbOrTrx = Kysely<Database> | Transaction<Database>
export type DialectName = DatabaseTarget['kind']

export interface PoolStats {
  total: number
  idle: number
  waiting: number
}

export interface DbHandle {
  db: Db
  dialect: DialectName
  /** Runs a write transaction; on SQLite, writes arriving together share one commit (see groupCommit). */
  transact: Transact
  /** Connections of the PostgreSQL pool; SQLite has a single connection and no pool. */
  poolStats: () => PoolStats | undefined
  /**
   * SQLite only: a number that moves whenever another connection (another process on the same file)
   * commits a change, so caches of this process know when they may be stale.
   */
  externalChanges?: () => number
  /**
   * PostgreSQL only: runs a compiled query as a named prepared statement, parsed and planned once
   * per connection rather than on every run. For the hottest reads.
   */
  prepared?: <R>(name: string, query: CompiledQuery) => Promise<R[]>
  close: () => Promise<void>
}

/**
 * Opens the store named by the config: an SQLite file (the embedded default) or a PostgreSQL pool.
 * The PostgreSQL driver is loaded only when it is used (~15 MB of memory an SQLite server never needs).
 */
export async function openDatabase (target: DatabaseTarget): Promise<DbHandle> {
  if (target.kind === 'sqlite') {
    if (target.file !== ':memory:') fs.mkdirSync(path.dirname(target.file), { recursive: true })
    const sqlite = new SQLite(target.file)
    // A new file is switched to WAL by the first process that opens it. Switching needs the file to
    // itself, and SQLite does not wait for that (busy_timeout does not apply): a second process
    // opening the file meanwhile is told SQLITE_BUSY at once. It tries again, for up to 30 s: a
    // process that is starting can wait, and on a slow disk setting up a new file takes a few flushes.
    await whileBusy(30_000, () => sqlite.pragma('journal_mode = WAL'))
    // FULL: a commit is on disk before the API acknowledges it, even across a power cut.
    sqlite.pragma('synchronous = FULL')
    sqlite.pragma('foreign_keys = ON')
    // No waiting inside SQLite: its busy handler sleeps with the event loop stopped. A statement that
    // meets another process's lock fails at once, and LockWaitingConnection waits, with the loop free.
    sqlite.pragma('busy_timeout = 0')
    const db = new Kysely<Database>({ dialect: new AgentrySqliteDialect({ database: withStatementCache(sqlite), inTransaction: () => sqlite.inTransaction }) })
    const dataVersion = sqlite.prepare('pragma data_version').pluck()
    let unknownVersion = 0
    return {
      db,
      dialect: 'sqlite',
      transact: groupCommit(db),
      poolStats: () => undefined,
      externalChanges: () => {
        try {
          return dataVersion.get() as number
        } catch (err) {
          // Another process holds the file to itself for a moment (recovering a crashed writer's WAL):
          // whether anything changed is not known, so a number never seen, and caches start afresh.
          if (isSqliteBusy(err)) return --unknownVersion
          throw err
        }
      },
      close: () => db.destroy()
    }
  }
  const { default: pg } = await import('pg')
  const bounded = target.statementTimeoutMs > 0
  const pool = new pg.Pool({
    connectionString: target.url,
    max: target.poolSize,
    statement_timeout: bounded ? target.statementTimeoutMs : undefined,
    // PostgreSQL ends a statement that runs too long, but cannot when it never gets it: a server or
    // network that goes silent (a partition, a host that froze) would hold every request, and
    // /readyz, until the kernel gives up on the connection, many minutes later. So the client gives
    // up too, a second after the server would have: on an answer (the connection is then destroyed,
    // and the pool makes a new one), and on a connection, or a free one from the pool.
    query_timeout: bounded ? target.statementTimeoutMs + 1000 : undefined,
    connectionTimeoutMillis: bounded ? Math.max(target.statementTimeoutMs, 1000) : undefined,
    application_name: 'agentry',
    // Statements are sent without waiting for the answer to the one before (pipelinedTransact).
    pipeline: true,
    types: { getTypeParser: pgTypeParser(pg.types) }
  })
  // A connection PostgreSQL ends (a restart, a failover, pg_terminate_backend) emits 'error'; unheard,
  // that would crash the process. The pool hears its idle connections (and says so on the pool) but
  // not those it has handed out, a transaction's among them, whose statements then fail on their own
  // (the request is answered 503) and which the pool drops when they come back. So every connection
  // is heard from the start, and says so once.
  pool.on('connect', (client) => {
    client.on('error', (err) => { process.emitWarning(`PostgreSQL connection lost: ${err.message}`) })
  })
  // Already said by the connection itself (above).
  pool.on('error', () => {})
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) })
  return {
    db,
    dialect: 'postgres',
    transact: pipelinedTransact(pool),
    prepared: async <R>(name: string, query: CompiledQuery) => (await pool.query({ name, text: query.sql, values: query.parameters as unknown[] })).rows as R[],
    poolStats: () => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount }),
    close: () => db.destroy()
  }
}

// int8 (bigint) columns hold unix seconds, sizes and sequence numbers, all well inside 2^53.
function pgTypeParser (types: typeof pg.types): typeof pg.types.getTypeParser {
  const int8: number = types.builtins.INT8
  const parseInt8 = (value: string): number => Number(value)
  const parser = (oid: number, format: 'text' | 'binary' = 'text'): (value: string) => unknown =>
    oid === int8 ? parseInt8 : types.getTypeParser(oid, format) as (value: string) => unknown
  return parser as typeof pg.types.getTypeParser
}

/** How long a statement waits for another process's lock on the SQLite file before it fails with SQLITE_BUSY. */
const LOCK_WAIT_MS = 5000

/** The code a database or network error carries (`SQLITE_BUSY`, `23505`, `ECONNREFUSED`...), if any. */
function codeOf (err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null | undefined)?.code
  return typeof code === 'string' ? code : undefined
}

export const isSqliteBusy = (err: unknown): boolean => {
  const code = codeOf(err)
  return code === 'SQLITE_BUSY' || code?.startsWith('SQLITE_BUSY_') === true
}

/** Runs fn, and again every 20 ms while it fails with SQLITE_BUSY, for timeoutMs at most. */
export async function whileBusy<T> (timeoutMs: number, fn: () => T): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      return fn()
    } catch (err) {
      if (!isSqliteBusy(err) || Date.now() >= deadline) throw err
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }
}

/**
 * SQLite's transactions begin IMMEDIATE, taking the write lock first (Kysely's own begin is DEFERRED).
 * Every transaction here writes, and with several processes on one file (instances sharing it, or a
 * CLI command beside the server) a deferred one that has read cannot wait for the lock: when
 * another process holds it, or has committed since the read, its first write fails at once with
 * SQLITE_BUSY, and no wait helps. Beginning IMMEDIATE waits for the lock (LockWaitingConnection)
 * before reading anything, so writers of different processes take turns instead of failing.
 */
class ImmediateSqliteDriver extends SqliteDriver {
  readonly #inTransaction: () => boolean
  #connection: LockWaitingConnection | undefined

  constructor (config: AgentrySqliteDialectConfig) {
    super(config)
    this.#inTransaction = config.inTransaction
  }

  override async acquireConnection (): Promise<DatabaseConnection> {
    const connection = await super.acquireConnection()
    this.#connection ??= new LockWaitingConnection(connection, this, this.#inTransaction)
    return this.#connection
  }

  override async beginTransaction (connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('begin immediate'))
  }
}

/**
 * Waits for another process's lock on the SQLite file without stopping the event loop.
 * better-sqlite3 is synchronous, and SQLite's own wait (busy_timeout) sleeps in the statement: a
 * server waiting for a lock held elsewhere answered nothing at all meanwhile, not even /healthz. So
 * busy_timeout is 0, and a statement that meets the lock fails at once with SQLITE_BUSY. Outside a
 * transaction that changed nothing (a `begin immediate`, or a statement on its own, which SQLite
 * rolls back whole), so it is run again a moment later, until it gets through or LOCK_WAIT_MS have
 * passed. Between tries the connection is handed back, so this process's other statements (reads,
 * which in WAL mode need no lock) go on. Inside a transaction nothing is tried again (it cannot
 * happen there: every transaction holds the write lock from its begin, and readers never wait in WAL).
 */
class LockWaitingConnection implements DatabaseConnection {
  constructor (
    private readonly connection: DatabaseConnection,
    private readonly driver: Driver,
    private readonly inTransaction: () => boolean
  ) {}

  executeQuery<R> (query: CompiledQuery): Promise<QueryResult<R>> {
    try {
      // better-sqlite3 runs the statement within this call, so a lock met throws here, and the
      // usual case costs nothing more than the call.
      return this.connection.executeQuery<R>(query)
    } catch (err) {
      return this.#waitForLock(query, err)
    }
  }

  async #waitForLock<R> (query: CompiledQuery, err: unknown): Promise<QueryResult<R>> {
    const deadline = Date.now() + LOCK_WAIT_MS
    for (let pause = 1; ; pause = Math.min(pause * 2, 20)) {
      if (!isSqliteBusy(err) || this.inTransaction() || Date.now() + pause > deadline) throw err
      await this.driver.releaseConnection(this)
      await new Promise((resolve) => setTimeout(resolve, pause))
      await this.driver.acquireConnection()
      try {
        return await this.connection.executeQuery<R>(query)
      } catch (again) {
        err = again
      }
    }
  }

  streamQuery<R> (query: CompiledQuery, chunkSize?: number): AsyncIterableIterator<QueryResult<R>> {
    return this.connection.streamQuery<R>(query, chunkSize)
  }
}

/**
 * Kysely's migrator runs SQLite migrations outside any transaction (its adapter says SQLite has no
 * transactional DDL, which it has) and its migration lock is a no-op there: two processes starting
 * on a new file both found nothing applied and both ran the first migration, and the slower one
 * failed ("table already exists"). Said to support it, the migrator runs the whole run in one
 * transaction, which begins IMMEDIATE: the second process waits for the first one's run, then finds
 * nothing left to do; and a run that fails half way leaves nothing half made.
 */
class TransactionalDdlSqliteAdapter extends SqliteAdapter {
  override get supportsTransactionalDdl (): boolean {
    return true
  }
}

interface AgentrySqliteDialectConfig extends SqliteDialectConfig {
  /** True while the connection is inside a transaction (better-sqlite3's `inTransaction`). */
  inTransaction: () => boolean
}

class AgentrySqliteDialect extends SqliteDialect {
  readonly #config: AgentrySqliteDialectConfig
  constructor (config: AgentrySqliteDialectConfig) {
    super(config)
    this.#config = config
  }

  override createDriver (): Driver {
    return new ImmediateSqliteDriver(this.#config)
  }

  override createAdapter (): DialectAdapter {
    return new TransactionalDdlSqliteAdapter()
  }
}

/**
 * Kysely prepares every query afresh; better-sqlite3 statements can be reused, and the service
 * runs the same few dozen SQL texts over and over. Bounded, so ad-hoc SQL cannot grow it forever.
 */
function withStatementCache (sqlite: SQLite.Database): SqliteDatabase {
  const cache = new Map<string, SQLite.Statement>()
  return {
    close: () => { sqlite.close() },
    prepare: (text: string) => {
      let stmt = cache.get(text)
      if (stmt === undefined) {
        stmt = sqlite.prepare(text)
        if (cache.size >= 500) cache.clear()
        cache.set(text, stmt)
      }
      return stmt
    }
  }
}

/** Cheap round trip used by /readyz. */
export async function pingDatabase (db: Db): Promise<void> {
  await sql`select 1`.execute(db)
}

/**
 * PostgreSQL's codes for a database that is there but cannot do the work now: shutting down or
 * starting up (57P01-57P03), out of connections (53300), the statement timed out
 * (57014, DATABASE_STATEMENT_TIMEOUT_MS), the connection failed or was lost (class 08).
 */
const PG_UNAVAILABLE = new Set(['57P01', '57P02', '57P03', '53300', '57014', '08000', '08001', '08003', '08004', '08006'])

/**
 * The PostgreSQL client's own words (its errors have no code) for a connection that ended under a
 * request, and for the waits bounded above (query_timeout, connectionTimeoutMillis).
 */
const PG_CLIENT_UNAVAILABLE = new Set([
  'Connection terminated unexpectedly',
  'Connection terminated',
  'Query read timeout',
  'timeout exceeded when trying to connect',
  'Connection terminated due to connection timeout'
])

/** Node's codes for a network peer that cannot be reached or answered no more (both clients report them). */
const NETWORK_UNAVAILABLE = new Set(['ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'ENETUNREACH', 'EHOSTUNREACH'])

/**
 * True when err says the database, or the file store, could not do the work now, through no fault
 * of the request: a retry a moment later may well succeed. SQLite: its write lock stayed with
 * another process for longer than a statement waits for it (LOCK_WAIT_MS, 5 s). PostgreSQL: see
 * PG_UNAVAILABLE, and PG_CLIENT_UNAVAILABLE for the client's own giving up. S3: the bucket answered 5xx or 429 (SlowDown, ServiceUnavailable, InternalError)
 * or did not answer within STORAGE_TIMEOUT_MS. Either: a host that cannot be reached, a connection
 * refused or cut (NETWORK_UNAVAILABLE).
 */
export function isStoreUnavailable (err: unknown): boolean {
  if (isBucketUnavailable(err)) return true
  const code = codeOf(err)
  if (code === undefined) return err instanceof Error && PG_CLIENT_UNAVAILABLE.has(err.message)
  return isSqliteBusy(err) || PG_UNAVAILABLE.has(code) || NETWORK_UNAVAILABLE.has(code)
}

/** The AWS SDK's errors: a status from the bucket ($metadata), or its own timeout (TimeoutError). */
function isBucketUnavailable (err: unknown): boolean {
  const e = err as { name?: unknown, $metadata?: { httpStatusCode?: unknown } } | null | undefined
  if (e?.name === 'TimeoutError') return true
  const status = e?.$metadata?.httpStatusCode
  return typeof status === 'number' && (status >= 500 || status === 429)
}

/** True when err is a unique-constraint violation on either dialect. */
export function isUniqueViolation (err: unknown): boolean {
  const code = codeOf(err)
  return code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY' || code === '23505'
}
