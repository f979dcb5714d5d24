import { createHash } from 'node:crypto'
import { Kysely, PostgresDialect, type CompiledQuery, type PostgresPool } from 'kysely'
import type pg from 'pg'
import type { Database } from './types.js'
import type { DbOrTrx } from './index.js'
import type { Transact } from './group-commit.js'

/** Each running transaction, by its Kysely instance: how to send a statement now, and those left to it. */
const running = new WeakMap<DbOrTrx, { run: (query: CompiledQuery) => Promise<unknown>, left: Array<Promise<unknown>> }>()

/**
 * Inside a pipelined transaction, sends the statement at once and leaves its answer to the
 * transaction: the caller goes on, the COMMIT follows the statement on the wire, and if the
 * statement fails the whole transaction fails with its error (nothing of it is written). Anywhere
 * else (SQLite's transactions) it runs the statement and waits for it.
 */
export async function answeredByCommit (trx: DbOrTrx, query: CompiledQuery): Promise<void> {
  const transaction = running.get(trx)
  if (transaction === undefined) {
    await trx.executeQuery(query)
    return
  }
  // Handed to the connection now, not after Kysely's own turns, so that it is on the wire before
  // the COMMIT whatever the caller does next.
  const answer = transaction.run(query)
  // Observed by the transaction; a rejection must not go unhandled meanwhile.
  answer.catch(() => {})
  transaction.left.push(answer)
}

/**
 * PostgreSQL write transactions whose statements travel together.
 *
 * The pool's connections run in `pg`'s pipeline mode: a statement is written to the socket as soon
 * as it is issued, without waiting for the answer to the one before, and PostgreSQL still runs them
 * one after another, in the order they arrive. A round trip to the database is the dearest part of
 * a write (a status change was seven of them), so:
 *
 * - `BEGIN` is not waited for: it leaves with the transaction's first statement. (BEGIN fails only
 *   when the connection does, and then so does everything after it; its answer is still checked
 *   before the COMMIT is sent.)
 * - Statements a write issues together (`Promise.all`) leave together and are answered together:
 *   the transaction's Kysely instance is bound to its one connection without Kysely's
 *   one-statement-at-a-time guard for transactions. They reach the connection in the order they
 *   were issued (each takes the same path through Kysely, so none overtakes another), which is the
 *   order PostgreSQL runs them in.
 * - A statement whose answer the write does not need may be left to the transaction
 *   (answeredByCommit): the COMMIT then leaves right behind it, and the transaction waits for both.
 *   A write's events are written that way, so the widget's event writers, which take turns from
 *   their events to their commit (insertEventsAndDeliveries), each hold their turn for one round
 *   trip (it was four: the lock, the webhook endpoints, the events and the COMMIT, one each).
 * - The `COMMIT`'s answer is checked: PostgreSQL answers `ROLLBACK` to a COMMIT when a statement of
 *   the transaction failed, and that is a failed write, whether or not the statement's own error
 *   was seen.
 *
 * The caller's function gets a Kysely instance that is the transaction; it must not start another.
 */
export function pipelinedTransact (pool: pg.Pool): Transact {
  /** One Kysely instance per pool connection, made the first time it runs a transaction. */
  const bound = new WeakMap<pg.PoolClient, { trx: Kysely<Database>, send: <R>(query: () => R) => R }>()

  return async <T>(fn: (trx: Kysely<Database>) => Promise<T>): Promise<T> => {
    const client = await pool.connect()
    let connection = bound.get(client)
    if (connection === undefined) {
      const send = corked(client)
      connection = { trx: boundTo(client, send), send }
      bound.set(client, connection)
      // Kysely readies its driver on first use, which delays that first statement by a few turns;
      // readied now, every statement takes the same path (see above).
      await connection.trx.connection().execute(async () => {})
    }
    const { trx, send } = connection
    // Written with the first statement, in the same system call.
    const begin = send(async () => await client.query('BEGIN'))
    // Observed below; a rejection must not go unhandled meanwhile.
    begin.catch(() => {})
    const left: Array<Promise<unknown>> = []
    running.set(trx, { run: (query) => send(async () => await client.query(statement(query.sql, query.parameters))), left })
    let result: T
    try {
      result = await fn(trx)
      const commit = send(async () => await client.query('COMMIT'))
      commit.catch(() => {})
      await begin
      // A statement that failed aborted the transaction, and PostgreSQL rolled it back at the COMMIT.
      for (const statement of left) await statement
      const { command } = await commit
      if (command !== 'COMMIT') throw new Error(`PostgreSQL answered the COMMIT with ${command}: a statement of the transaction failed, and none of it was written`)
    } catch (err) {
      running.delete(trx)
      // In order after whatever is still on its way; harmless when nothing is open any more.
      const rolledBack = await client.query('ROLLBACK').then(() => true, () => false)
      // A connection that cannot even roll back is not given to anyone else.
      client.release(rolledBack ? undefined : err instanceof Error ? err : new Error(String(err)))
      throw err
    }
    running.delete(trx)
    client.release()
    return result
  }
}

/**
 * Statements issued in one go are written to the socket in one system call: the connection's stream
 * is corked at the first and uncorked once the current run of callbacks is over (`pg` corks each
 * statement's own messages the same way; those nest inside).
 */
function corked (client: pg.PoolClient): <R>(query: () => R) => R {
  const stream = client.connection.stream
  let open = false
  const uncork = () => { open = false; stream.uncork() }
  return (query) => {
    if (!open) {
      open = true
      stream.cork()
      process.nextTick(uncork)
    }
    return query()
  }
}

/** Names of the prepared statements, by their text. */
const prepared = new Map<string, string>()
/** Distinct statements prepared at most (each connection keeps every one it has run). */
const PREPARED_KEPT = 256

/**
 * A transaction's statement as `pg` runs it: prepared (parsed and planned once per connection, then
 * only run; planning was most of the database's work for some of them, ~0.2-0.6 ms on a 2-core VM)
 * unless its text has a `*`. A statement prepared as `select *` or `returning *` fails ("cached plan
 * must not change result type") once a newer instance's migration adds a column, so writes return
 * their columns by name. Named after a hash of the text, so one text has one name everywhere.
 */
function statement (text: string, parameters: readonly unknown[]): pg.QueryConfig {
  const values = parameters as unknown[]
  if (text.includes('*')) return { text, values }
  let name = prepared.get(text)
  if (name === undefined) {
    if (prepared.size >= PREPARED_KEPT) return { text, values }
    name = `agentry_${createHash('sha256').update(text).digest('hex').slice(0, 24)}`
    prepared.set(text, name)
  }
  return { name, text, values }
}

/** A Kysely instance that runs every statement on this one connection, as it is issued. */
function boundTo (client: pg.PoolClient, send: <R>(query: () => R) => R): Kysely<Database> {
  // The same object every time, so that Kysely's driver makes one connection wrapper for it.
  const connection = {
    query: async (text: string, parameters: readonly unknown[]) => await send(async () => await client.query(statement(text, parameters))),
    release: () => {}
  }
  const pool = { connect: async () => connection, end: async () => {} } as unknown as PostgresPool
  return new Kysely<Database>({ dialect: new PostgresDialect({ pool }) })
}
