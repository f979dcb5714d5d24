import type { FastifyInstance } from 'fastify'
import { AppError } from '../../errors/index.js'
import { addressKey, type RateLimiter } from '../../ratelimit/limiter.js'
import { tokenHashOf } from './auth.js'

/**
 * Per-token limits (per client address without a token) on every request of this scope. Every answer
 * carries RateLimit-Limit, -Remaining and -Reset (IETF draft headers); past the limit the answer is
 * 429 `rate_limited` with Retry-After.
 *
 * Our own, rather than @fastify/rate-limit (used until the benchmarks): that plugin's per-request
 * pipeline (async hook, awaited key generator, a promise around the store, awaited max/timeWindow)
 * cost ~8 µs of CPU per request, 17% of a GET answered from the read cache; this costs ~2 µs, most of
 * it its three headers.
 * It runs before the token check, so guessing tokens is limited too.
 */
export function registerRateLimit (app: FastifyInstance, limiter: RateLimiter): void {
  const per = describeWindow(limiter.windowMs)
  app.addHook('onRequest', (request, reply, done) => {
    const state = limiter.take(tokenHashOf(request) ?? addressKey(request.ip), Date.now())
    void reply.header('ratelimit-limit', state.limit)
    void reply.header('ratelimit-remaining', state.remaining)
    void reply.header('ratelimit-reset', state.resetSeconds)
    if (state.allowed) {
      done()
      return
    }
    void reply.header('retry-after', state.resetSeconds)
    done(new AppError('rate_limited', `Too many requests for this token: at most ${limiter.max} per ${per}. Retry after the number of seconds in the Retry-After header.`))
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
