import { createHash, randomBytes } from 'node:crypto'
import type { FastifyRequest } from 'fastify'
import type { Db, DbOrTrx } from '../../db/index.js'
import { answeredByCommit } from '../../db/pipelined.js'
import { claimIdempotencyKey, completeIdempotencyKeyQuery, findIdempotencyKey, releaseIdempotencyClaims, releaseIdempotencyKey } from '../../db/repositories/idempotency.js'
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
 * can take (its avatar download, AVATAR_TIMEOUT_MS; its wait for room to process the image, as
 * long again at most; and then the image work and its database work). After that, a retry with
 * the key takes it over: the request that claimed it stopped on the way (its process was killed,
 * or the database failed it and could not take the claim back).
 */
export function idempotencyClaimSeconds (avatarTimeoutMs: number): number {
  return 2 * Math.ceil(avatarTimeoutMs / 1000) + 120
}

/** Keeps the answer to a request with an Idempotency-Key, in the transaction of the write it answers. */
export type KeepAnswer<T> = (trx: DbOrTrx, answer: T) => Promise<void>

/** How often a claim that could not be released is tried again (see IdempotencyKeys.releaseLater). */
const RELEASE_RETRY_MS = 1000

/**
 * Runs creates at most once per (widget, key). A retry with the same key and body gets the first
 * answer back; with another body, 422. Only successes are kept, and each is kept by its own write's
 * transaction (run calls `keep` in it): a create that committed is answered the same way ever after,
 * whatever becomes of the request. A failed attempt created nothing, so its key is released and a
 * retry runs again (a host that was down may be up now).
 *
 * Each claim is marked with a name of its own request, and released only by it: when the release
 * fails (the database unreachable for a moment, the very failure the client is told to retry
 * after), it is tried again every second until it goes through or the claim would be stale anyway;
 * so is a claim whose own statement failed without an answer (it may have been made). At shutdown,
 * the claims of requests that are still running, about to be cut off, are released
 * (releaseRunning). Without this the key answered 409 `idempotency_key_in_progress` until stale.
 */
export class IdempotencyKeys {
  /** Claims of requests running on this instance, by owner. */
  private readonly running = new Map<string, { widgetId: string, key: string }>()
  /** Releases waiting to be tried again. */
  private readonly retries = new Set<NodeJS.Timeout>()
  private closed = false

  constructor (private readonly db: Db, private readonly claimSeconds: number) {}

  async run<T> (widgetId: string, key: string, fingerprint: string, create: (keep: KeepAnswer<T>) => Promise<T>): Promise<IdempotentResult<T>> {
    const now = Math.floor(Date.now() / 1000)
    const owner = randomBytes(12).toString('base64url')
    let claimed: boolean
    try {
      claimed = await claimIdempotencyKey(this.db, widgetId, key, fingerprint, now, now - this.claimSeconds, owner)
    } catch (err) {
      // Made or not, nobody will answer it: released once the database answers.
      this.releaseLater(widgetId, key, owner, now)
      throw err
    }
    if (!claimed) {
      const row = await findIdempotencyKey(this.db, widgetId, key)
      if (row === undefined) return await this.run(widgetId, key, fingerprint, create) // released meanwhile
      if (row.request_hash !== fingerprint) {
        throw new AppError('idempotency_key_reused', 'This Idempotency-Key was already used with a different request body; use a new key for a new request.')
      }
      if (row.status_code === null || row.response === null) {
        throw new AppError('idempotency_key_in_progress', 'A request with this Idempotency-Key is still being processed; retry in a moment.')
      }
      return { payload: JSON.parse(row.response) as T, replayed: true }
    }
    this.running.set(owner, { widgetId, key })
    try {
      const payload = await create(async (trx, answer) => {
        // Kept from the moment it is answered: a create can run for minutes (its avatar's download).
        const answeredAt = Math.floor(Date.now() / 1000)
        await answeredByCommit(trx, completeIdempotencyKeyQuery(trx, widgetId, key, fingerprint, answeredAt, 200, JSON.stringify(answer)))
      })
      return { payload, replayed: false }
    } catch (err) {
      // The caller hears of the request's failure; the key is freed for its retry.
      await releaseIdempotencyKey(this.db, widgetId, key, owner).catch(() => { this.releaseLater(widgetId, key, owner, now) })
      throw err
    } finally {
      this.running.delete(owner)
    }
  }

  /** Tries a release again every RELEASE_RETRY_MS until it goes through, or the claim (made at claimedAt) is stale anyway. */
  private releaseLater (widgetId: string, key: string, owner: string, claimedAt: number): void {
    if (this.closed || Date.now() / 1000 >= claimedAt + this.claimSeconds) return
    const timer = setTimeout(() => {
      this.retries.delete(timer)
      releaseIdempotencyKey(this.db, widgetId, key, owner).catch(() => { this.releaseLater(widgetId, key, owner, claimedAt) })
    }, RELEASE_RETRY_MS)
    timer.unref()
    this.retries.add(timer)
  }

  /**
   * Releases the claims of the requests still running here: called when shutdown gives up waiting
   * for them (their creates are cut off with the process), so their retries can run elsewhere at once.
   */
  async releaseRunning (): Promise<void> {
    const owners = [...this.running.keys()]
    this.running.clear()
    await releaseIdempotencyClaims(this.db, owners)
  }

  /** Stops retrying releases (the database is about to close). */
  close (): void {
    this.closed = true
    for (const timer of this.retries) clearTimeout(timer)
    this.retries.clear()
  }
}
