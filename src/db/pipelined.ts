import { Kysely, PostgresDialect, type PostgresPool } from 'kysely'
import type pg from 'pg'
import type { Database } from './types.js'
import type { Transact } from './group-commit.js'

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
 * - The `COMMIT`'s answer is checked: PostgreSQL answers `ROLLBACK` to a COMMIT when a statement of
 *   the transaction failed, and that is a failed write, whether or not the statement's own error
 *   was seen.
 *
 * The caller's function gets a Kysely instance that is the transaction; it must not start another.
 */
export function pipelinedTransact (pool: pg.Pool): Transact {
  /** One Kysely instance per pool connection, made the first time it runs a transaction. */
  const bound = new WeakMap<pg.PoolClient, Kysely<Database>>()

  return async <T>(fn: (trx: Kysely<Database>) => Promise<T>): Promise<T> => {
    const client = await pool.connect()
    let trx = bound.get(client)
    if (trx === undefined) {
      trx = boundTo(client)
      bound.set(client, trx)
      // Kysely readies its driver on first use, which delays that first statement by a few turns;
      // readied now, every statement takes the same path (see above).
      await trx.connection().execute(async () => {})
    }
    const begin = client.query('BEGIN')
    // Observed below; a rejection must not go unhandled meanwhile.
    begin.catch(() => {})
    let result: T
    try {
      result = await fn(trx)
      await begin
      const commit = await client.query('COMMIT')
      if (commit.command !== 'COMMIT') throw new Error(`PostgreSQL answered the COMMIT with ${commit.command}: a statement of the transaction failed, and none of it was written`)
    } catch (err) {
      // In order after whatever is still on its way; harmless when nothing is open any more.
      const rolledBack = await client.query('ROLLBACK').then(() => true, () => false)
      // A connection that cannot even roll back is not given to anyone else.
      client.release(rolledBack ? undefined : err instanceof Error ? err : new Error(String(err)))
      throw err
    }
    client.release()
    return result
  }
}

/** A Kysely instance that runs every statement on this one connection, as it is issued. */
function boundTo (client: pg.PoolClient): Kysely<Database> {
  // The same object every time, so that Kysely's driver makes one connection wrapper for it.
  const connection = { query: client.query.bind(client), release: () => {} }
  const pool = { connect: async () => connection, end: async () => {} } as unknown as PostgresPool
  return new Kysely<Database>({ dialect: new PostgresDialect({ pool }) })
}
