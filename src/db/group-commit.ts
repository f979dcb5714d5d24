import { sql, type Kysely } from 'kysely'
import type { Database } from './types.js'

/**
 * Runs fn in a transaction and resolves with its result once that is committed (durably). fn gets
 * the transaction as a Kysely instance (a Kysely Transaction on SQLite, see pipelinedTransact for
 * PostgreSQL), and must not start another inside it.
 */
export type Transact = <T>(fn: (trx: Kysely<Database>) => Promise<T>) => Promise<T>

interface Pending {
  fn: (trx: Kysely<Database>) => Promise<unknown>
  resolve: (value: unknown) => void
  reject: (reason: unknown) => void
}

type Outcome = { ok: true, value: unknown } | { ok: false, error: unknown }

/** Turns of the event loop a batch waits at most for more writes to join it (see groupCommit). */
const GATHER_TURNS = 5

/**
 * Group commit for SQLite. better-sqlite3 commits synchronously, and with `synchronous=FULL` every
 * commit waits for the disk to flush (~100-500 µs on these VMs, with the event loop stopped). Writes
 * that arrive while the event loop is busy are queued and run together a turn or a few later (see
 * GATHER_TURNS: more writers share a commit; a lone write waits for one extra turn only), inside one
 * transaction: each in its own SAVEPOINT, so one that fails (a unique violation, say) rolls back
 * only itself and rejects only its caller. Every caller is answered after the one COMMIT, never
 * before: nothing is acknowledged that is not on disk. If the COMMIT itself fails, every write of
 * the batch failed, and every caller hears so.
 *
 * PostgreSQL needs none of this: each write is its own transaction on its own pool connection
 * (pipelinedTransact).
 */
export function groupCommit (db: Kysely<Database>): Transact {
  let queue: Pending[] = []
  let scheduled = false

  async function flush (): Promise<void> {
    scheduled = false
    const batch = queue
    queue = []
    if (batch.length === 1) {
      // Nothing to share: a plain transaction, without savepoints.
      const [only] = batch as [Pending]
      await db.transaction().execute(only.fn).then(only.resolve, only.reject)
      return
    }
    const outcomes: Outcome[] = []
    try {
      await db.transaction().execute(async (trx) => {
        for (const item of batch) {
          await sql`savepoint agentry_write`.execute(trx)
          try {
            const value = await item.fn(trx)
            await sql`release agentry_write`.execute(trx)
            outcomes.push({ ok: true, value })
          } catch (error) {
            await sql`rollback to agentry_write`.execute(trx)
            await sql`release agentry_write`.execute(trx)
            outcomes.push({ ok: false, error })
          }
        }
      })
    } catch (error) {
      for (const item of batch) item.reject(error)
      return
    }
    batch.forEach((item, i) => {
      const outcome = outcomes[i] as Outcome
      if (outcome.ok) item.resolve(outcome.value)
      else item.reject(outcome.error)
    })
  }

  return async <T>(fn: (trx: Kysely<Database>) => Promise<T>): Promise<T> => await new Promise<T>((resolve, reject) => {
    queue.push({ fn, resolve: resolve as (value: unknown) => void, reject })
    if (!scheduled) {
      scheduled = true
      // Runs after the I/O callbacks of this turn of the event loop, so requests read in the same
      // turn share a commit; then waits one more turn, and another while each turn brings more
      // writes (GATHER_TURNS at most): with many writers, each commit is shared by more of them.
      let seen = -1
      let turns = 0
      const gather = (): void => {
        if (queue.length > seen && turns < GATHER_TURNS) {
          seen = queue.length
          turns++
          setImmediate(gather)
          return
        }
        void flush()
      }
      setImmediate(gather)
    }
  })
}
