import type { WindowCount } from '../db/repositories/rate-limits.js'

interface Window {
  /**
   * Requests counted in this window: with shared counts, those of every instance as of the last
   * exchange, and this instance's since.
   */
  count: number
  /** Of count, this instance's requests not yet added to the shared count. */
  unsent: number
  /** Date.now() at which the window ends and the count starts again. */
  resetAt: number
  /** Counted by this instance alone (its key is not shared: see SharedCounts.shares). */
  alone: boolean
}

/** What one counted request learns: the three RateLimit-* values, and whether it may go on. */
export interface RateLimitState {
  readonly limit: number
  readonly remaining: number
  /** Seconds until the window ends (RateLimit-Reset, and Retry-After when refused). */
  readonly resetSeconds: number
  readonly allowed: boolean
}

/** Where instances add up their counts (PostgreSQL: addToRateWindows; SQLite: openSqliteRateWindows). */
export interface SharedCounts {
  /** Adds these requests to each key's count in the shared window; answers the totals. */
  add: (counts: ReadonlyArray<{ key: string, count: number }>, now: number, windowMs: number) => Promise<WindowCount[]>
  /**
   * Whether a key's count is shared: tokens this instance found valid are; tokens it found unknown
   * or revoked, and client addresses, are counted by each instance alone, so made-up tokens never
   * reach a store. Undefined while not known yet.
   */
  shares: (key: string) => boolean | undefined
  /** Told after each exchange whether it succeeded (a metric). */
  exchanged?: (ok: boolean) => void
}

/**
 * The key of requests without a token: their client address (a token's key is its sha256, hex).
 * An IPv6 address counts by its /64, the block one host or one home is given: a client holds
 * 2^64 addresses of it, and a window per address would let it send made-up tokens for ever.
 * An IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`) counts as itself.
 */
export function addressKey (ip: string): string {
  if (!ip.includes(':')) return `ip:${ip}`
  const bare = (ip.split('%')[0] ?? '').toLowerCase()
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(bare)
  if (mapped !== null) return `ip:${mapped[1] as string}`
  const [left = '', right] = bare.split('::')
  const head = left === '' ? [] : left.split(':')
  const tail = right === undefined || right === '' ? [] : right.split(':')
  const groups = right === undefined ? head : [...head, ...Array<string>(Math.max(0, 8 - head.length - tail.length)).fill('0'), ...tail]
  return `ip:${groups.slice(0, 4).map((g) => g.replace(/^0+(?=.)/, '')).join(':')}::/64`
}

export function isAddressKey (key: string): boolean {
  return key.startsWith('ip:')
}

/** How often instances add up their counts while requests come in. */
const EXCHANGE_MS = 250
/** Keys whose windows an instance remembers at most: ~16 MB. */
const MAX_KEYS = 100_000
/** Keys per statement. */
const EXCHANGE_BATCH = 1000

/**
 * Fixed-window limits per key (a token's hash, never the token, or a client address). Synchronous
 * throughout: it runs on every API request.
 *
 * With shared counts (on PostgreSQL, and on an SQLite file: all but an in-memory database), every
 * instance adds its requests to each token's shared count every EXCHANGE_MS while it has some, and
 * at once when it has counted a twentieth of the limit for a token since it last did; it answers
 * from what it learnt then plus what it counted since. So the limit holds across instances, give or
 * take what they admit between two exchanges, and a request never waits for the store. While the
 * store cannot be reached, each instance counts alone and sends its counts later.
 */
export class RateLimiter {
  private readonly windows = new Map<string, Window>()
  private nextSweep: number
  /** Keys with requests not yet sent (shared counts only). */
  private readonly unsentKeys = new Set<string>()
  /** Requests of one key that make an exchange start at once. */
  private readonly sendAfter: number
  private scheduled: { handle: NodeJS.Timeout | NodeJS.Immediate, now: boolean } | undefined
  private exchanging: Promise<void> | undefined
  /** An exchange was asked for at once while one ran. */
  private again = false
  private failing = false
  private closed = false

  /**
   * maxKeys: how many keys' windows are remembered at most. Past it the oldest window is forgotten
   * (its key starts afresh), so a flood of made-up tokens or addresses cannot use up memory.
   */
  constructor (readonly max: number, readonly windowMs: number, private readonly shared?: SharedCounts, private readonly maxKeys = MAX_KEYS) {
    this.nextSweep = Date.now() + windowMs
    this.sendAfter = Math.max(1, Math.floor(max / 20))
  }

  /** Whether one more request for the key would be allowed now; counts nothing. */
  allows (key: string, now: number): boolean {
    const w = this.windows.get(key)
    return w === undefined || w.resetAt <= now || w.count < this.max
  }

  /** Counts one request for the key. */
  take (key: string, now: number): RateLimitState {
    if (now >= this.nextSweep) {
      // Windows that ended are forgotten, so keys seen once (bad tokens, many addresses) do not pile up.
      for (const [k, w] of this.windows) if (w.resetAt <= now) this.windows.delete(k)
      this.nextSweep = now + this.windowMs
    }
    let w = this.windows.get(key)
    if (w === undefined || w.resetAt <= now) {
      if (w !== undefined) {
        // Set anew, so that the map stays in the order the windows started.
        this.windows.delete(key)
      } else if (this.windows.size >= this.maxKeys) {
        const oldest = this.windows.keys().next()
        if (oldest.done !== true) this.windows.delete(oldest.value)
      }
      w = { count: 0, unsent: 0, resetAt: now + this.windowMs, alone: false }
      this.windows.set(key, w)
    }
    w.count++
    if (this.shared !== undefined && !this.closed && !w.alone) {
      w.unsent++
      this.unsentKeys.add(key)
      this.schedule(w.unsent >= this.sendAfter)
    }
    return {
      limit: this.max,
      remaining: Math.max(0, this.max - w.count),
      resetSeconds: Math.ceil((w.resetAt - now) / 1000),
      allowed: w.count <= this.max
    }
  }

  /** Stops exchanging; what this instance counted since the last exchange is sent first. */
  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.cancelScheduled()
    await this.exchanging
    if (this.unsentKeys.size > 0) await this.exchange()
  }

  /** Makes sure an exchange comes: at once (next turn of the event loop), or within EXCHANGE_MS. */
  private schedule (at: boolean): void {
    // While the database cannot be reached, no exchange at once: they would follow one another.
    const now = at && !this.failing
    if (this.exchanging !== undefined) {
      // It runs again when done: at once if asked, else within EXCHANGE_MS (unsent keys remain).
      if (now) this.again = true
      return
    }
    if (this.scheduled !== undefined && (this.scheduled.now || !now)) return
    this.cancelScheduled()
    const run = (): void => {
      this.scheduled = undefined
      this.exchanging = this.exchange().finally(() => {
        this.exchanging = undefined
        const again = this.again
        this.again = false
        if (!this.closed && this.unsentKeys.size > 0) this.schedule(again)
      })
    }
    if (now) {
      this.scheduled = { handle: setImmediate(run), now: true }
    } else {
      // Slower while the database cannot be reached.
      const handle = setTimeout(run, this.failing ? EXCHANGE_MS * 4 : EXCHANGE_MS)
      handle.unref()
      this.scheduled = { handle, now: false }
    }
  }

  private cancelScheduled (): void {
    const s = this.scheduled
    if (s === undefined) return
    if (s.now) clearImmediate(s.handle as NodeJS.Immediate)
    else clearTimeout(s.handle as NodeJS.Timeout)
    this.scheduled = undefined
  }

  /** Sends the unsent counts of shared keys, and learns their totals. Never throws. */
  private async exchange (): Promise<void> {
    const shared = this.shared
    if (shared === undefined) return
    const now = Date.now()
    const sending: Array<{ key: string, count: number, window: Window }> = []
    const stillUnknown: string[] = []
    for (const key of this.unsentKeys) {
      const window = this.windows.get(key)
      // A window that ended takes its count with it.
      if (window === undefined || window.unsent === 0 || window.resetAt <= now) continue
      const shares = shared.shares(key)
      if (shares === false) {
        // Counted here alone from now on, for the rest of the window.
        window.unsent = 0
        window.alone = true
        continue
      }
      if (shares === undefined) {
        // Its token is being checked (an exchange may run before the first request's check ends):
        // asked again with the next exchange.
        stillUnknown.push(key)
        continue
      }
      sending.push({ key, count: window.unsent, window })
      window.unsent = 0
    }
    this.unsentKeys.clear()
    for (const key of stillUnknown) this.unsentKeys.add(key)
    for (let i = 0; i < sending.length; i += EXCHANGE_BATCH) {
      const part = sending.slice(i, i + EXCHANGE_BATCH)
      let totals: WindowCount[]
      try {
        totals = await shared.add(part, now, this.windowMs)
      } catch (err) {
        // Sent again with the next exchange, unless its window ended meanwhile.
        for (const s of sending.slice(i)) {
          if (this.windows.get(s.key) !== s.window) continue
          s.window.unsent += s.count
          this.unsentKeys.add(s.key)
        }
        if (!this.failing) {
          process.emitWarning(`agentry could not add up rate-limit counts with the other instances; counting in this instance alone until it can: ${err instanceof Error ? err.message : String(err)}`)
        }
        this.failing = true
        shared.exchanged?.(false)
        return
      }
      const sent = new Map(part.map((s) => [s.key, s]))
      for (const total of totals) {
        const s = sent.get(total.key)
        // A window this instance started afresh meanwhile is left alone.
        if (s === undefined || this.windows.get(total.key) !== s.window) continue
        s.window.count = total.count + s.window.unsent
        s.window.resetAt = total.endsAt
      }
    }
    this.failing = false
    if (sending.length > 0) shared.exchanged?.(true)
  }
}
