import { createHash } from 'node:crypto'
import type { FastifyRequest } from 'fastify'
import type { Db, DbOrTrx } from '../../db/index.js'
import { answeredByCommit } from '../../db/pipelined.js'
import { claimIdempotencyKey, completeIdempotencyKeyQuery, findIdempotencyKey, releaseIdempotencyKey } from '../../db/repositories/idempotency.js'
import { AppError, errors } from '../../errors/index.js'

const KEY = /^[\x21-\x7e]{1,255}$/

/** The Idempotency-Key header, checked; undefined when the request has none. */
export function idempotencyKeyOf (request: FastifyRequest): string | undefined {
  const key = request.headers['idempotency-key']
  if (key === undefined) return undefined
  if (typeof key !== 'string' || !KEY.test(key)) {
    throw errors.validation([{ field: 'Idempotency-Key', message: 'must be 1 to 255 visible ASCII characters (a UUID is a good choice)' }])
  }
  return key
}

/** A fingerprint of what the request asks for: same key with another body is refused. */
export function requestFingerprint (body: unknown, upload: Buffer | undefined): string {
  const canonical = JSON.stringify(body, (_k, v: unknown) =>
    v !== null && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => a.localeCompare(b))) : v)
  const hash = createHash('sha256').update(canonical ?? 'null')
  if (upload !== undefined) hash.update('\0upload:').update(upload)
  return hash.digest('hex')
}

export interface IdempotentResult<T> {
  payload: T
  replayed: boolean
}

/**
 * How long a claimed key without an answer is taken to be still running: longer than any create
 * can take (its avatar download, AVATAR_TIMEOUT_MS, and then its database work). After that, a
 * retry with the key takes it over: the request that claimed it stopped on the way (its process
 * was killed, or the database failed it and could not take the claim back).
 */
export function idempotencyClaimSeconds (avatarTimeoutMs: number): number {
  return Math.ceil(avatarTimeoutMs / 1000) + 120
}

/** Keeps the answer to a request with an Idempotency-Key, in the transaction of the write it answers. */
export type KeepAnswer<T> = (trx: DbOrTrx, answer: T) => Promise<void>

/**
 * Runs a create at most once per (widget, key). A retry with the same key and body gets the first
 * answer back; with another body, 422. Only successes are kept, and each is kept by its own write's
 * transaction (run calls `keep` in it): a create that committed is answered the same way ever after,
 * whatever becomes of the request. A failed attempt created nothing, so its key is released and a
 * retry runs again (a host that was down may be up now).
 */
export async function idempotent<T> (
  db: Db, widgetId: string, key: string, fingerprint: string, claimSeconds: number, run: (keep: KeepAnswer<T>) => Promise<T>
): Promise<IdempotentResult<T>> {
  const now = Math.floor(Date.now() / 1000)
  if (!await claimIdempotencyKey(db, widgetId, key, fingerprint, now, now - claimSeconds)) {
    const row = await findIdempotencyKey(db, widgetId, key)
    if (row === undefined) return await idempotent(db, widgetId, key, fingerprint, claimSeconds, run) // released meanwhile
    if (row.request_hash !== fingerprint) {
      throw new AppError('idempotency_key_reused', 'This Idempotency-Key was already used with a different request body; use a new key for a new request.')
    }
    if (row.status_code === null || row.response === null) {
      throw new AppError('idempotency_key_in_progress', 'A request with this Idempotency-Key is still being processed; retry in a moment.')
    }
    return { payload: JSON.parse(row.response) as T, replayed: true }
  }
  try {
    const payload = await run(async (trx, answer) => {
      // Kept from the moment it is answered: a create can run for minutes (its avatar's download).
      const answeredAt = Math.floor(Date.now() / 1000)
      await answeredByCommit(trx, completeIdempotencyKeyQuery(trx, widgetId, key, fingerprint, answeredAt, 200, JSON.stringify(answer)))
    })
    return { payload, replayed: false }
  } catch (err) {
    // The caller hears of the request's failure; a claim that could not be released is taken over once stale.
    await releaseIdempotencyKey(db, widgetId, key).catch(() => {})
    throw err
  }
}
