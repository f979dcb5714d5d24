import type { FastifyInstance, FastifyReply } from 'fastify'
import { AppError } from '../../errors/index.js'
import { addressKey, type RateLimiter } from '../../ratelimit/limiter.js'
import type { TokenService } from '../../tokens/service.js'
import { tokenHashOf } from './auth.js'

/**
 * Per-token limits on every request of this scope. A token this instance knows to be valid is
 * counted in its own window; a request that does not authenticate (no token, or an unknown or
 * revoked one) is counted in its client address's window. A token not known to be valid is looked
 * up here, and only while its address's window is not spent: so a client sending a new made-up
 * token each time is refused like any other past the limit, and costs no lookup then, and made-up
 * tokens take no memory of their own. Every answer carries RateLimit-Limit, -Remaining and -Reset
 * (IETF draft headers); past the limit the answer is 429 `rate_limited` with Retry-After.
 *
 * Our own, rather than @fastify/rate-limit (used until the benchmarks): that plugin's per-request
 * pipeline (async hook, awaited key generator, a promise around the store, awaited max/timeWindow)
 * cost ~8 µs of CPU per request, 17% of a GET answered from the read cache; this costs ~2 µs, most of
 * it its three headers.
 */
export function registerRateLimit (app: FastifyInstance, limiter: RateLimiter, tokens: Pick<TokenService, 'wasValid' | 'authenticateHash'>): void {
  const per = describeWindow(limiter.windowMs)
  const count = (key: string, byToken: boolean, reply: FastifyReply, done: (err?: Error) => void): void => {
    const state = limiter.take(key, Date.now())
    void reply.header('ratelimit-limit', state.limit)
    void reply.header('ratelimit-remaining', state.remaining)
    void reply.header('ratelimit-reset', state.resetSeconds)
    if (state.allowed) {
      done()
      return
    }
    void reply.header('retry-after', state.resetSeconds)
    const whose = byToken ? 'for this token' : 'from this address without a valid token'
    done(new AppError('rate_limited', `Too many requests ${whose}: at most ${limiter.max} per ${per}. Retry after the number of seconds in the Retry-After header.`))
  }
  app.addHook('onRequest', (request, reply, done) => {
    const hash = tokenHashOf(request)
    if (hash !== undefined && tokens.wasValid(hash) === true) {
      count(hash, true, reply, done)
      return
    }
    const address = addressKey(request.ip)
    if (hash === undefined || !limiter.allows(address, Date.now())) {
      count(address, false, reply, done)
      return
    }
    // The token check that follows answers from the cache this fills.
    tokens.authenticateHash(hash).then((caller) => {
      if (caller !== undefined) count(hash, true, reply, done)
      else count(address, false, reply, done)
    }, (err: Error) => {
      // Not authenticated either (the store could not say): counted by address, and answered with the lookup's error.
      count(address, false, reply, (refused) => { done(refused ?? err) })
    })
  })
}

function describeWindow (ms: number): string {
  if (ms % 3_600_000 === 0) return plural(ms / 3_600_000, 'hour')
  if (ms % 60_000 === 0) return plural(ms / 60_000, 'minute')
  return ms % 1000 === 0 ? plural(ms / 1000, 'second') : `${ms} ms`
}

function plural (n: number, unit: string): string {
  return n === 1 ? `1 ${unit}` : `${n} ${unit}s`
}
