import type { IncomingMessage, ServerResponse } from 'node:http'
import { etagMatches, type AgentService } from '../agents/service.js'
import type { AgentRepresentation } from '../agents/read-cache.js'
import type { RequestMetrics } from '../metrics/requests.js'
import type { TokenService } from '../tokens/service.js'
import { authorizationHash } from './plugins/auth.js'
import type { RateLimiter } from './plugins/rate-limit.js'
import { requestIdOf } from './request-id.js'
import { agentEnvelope } from './routes/agents/etag.js'

export interface FastPathDeps {
  /** Where the API is mounted, e.g. /api/external/v1. */
  prefix: string
  agents: AgentService
  tokens: TokenService
  /** Undefined when rate limits are off. */
  limiter: RateLimiter | undefined
  requests: RequestMetrics
  /** True once shutdown has begun: every request then goes through Fastify, which answers 503. */
  closing: () => boolean
  /** Counts the requests answered here (agentry_http_fast_answers_total). */
  answered: () => void
}

/** Takes a request and answers it, or declines it (false) without touching it. */
export type FastPath = (req: IncomingMessage, res: ServerResponse) => boolean

const JSON_TYPE = 'application/json; charset=utf-8'

/** The id in a path: what find-my-way would take as the `:id` parameter as is (no decoding, no `;`). */
const PLAIN_ID = /^[0-9A-Za-z_-]{1,200}$/

/**
 * `GET /agents/:id` answered before Fastify sees the request, when everything the answer needs is
 * in memory already: the token in the token cache, the agent in the read cache, the rate limit not
 * reached. It does what the usual way does for such a request, in the same order and with the same
 * bytes out (test/fast-path.test.ts compares the two, header by header): the token's rate limit is
 * counted, the token checked, the request id taken or made, the agent and its ETag sent in the
 * envelope (or 304 when If-None-Match has its ETag), the request counted in the metrics. What it
 * declines goes the usual way, unchanged: anything but a plain GET of one agent (HEAD, a query
 * string, a body, an encoded id), an unknown or uncached token, an agent not in the read cache (the
 * usual way then reads it and caches it), a limit reached, shutdown.
 *
 * Why: a GET from the read cache spends ~40 µs of CPU going through Fastify's request lifecycle
 * (request and reply objects, five hooks, parameter validation, an async handler, header
 * normalisation), against ~16 µs for node:http alone answering the same bytes. See BENCHMARKS.md.
 * It is only used where no request line is logged (LOG_LEVEL above info): at info every request
 * writes two log lines, which cost more than this saves, and those lines are Fastify's.
 */
export function agentFastPath (deps: FastPathDeps): FastPath {
  const base = `${deps.prefix}/agents/`
  const route = `${deps.prefix}/agents/:id`
  const bodies = new WeakMap<AgentRepresentation, Buffer>()

  return (req, res) => {
    if (req.method !== 'GET') return false
    const url = req.url ?? ''
    if (!url.startsWith(base)) return false
    let id = url.slice(base.length)
    if (id.endsWith('/')) id = id.slice(0, -1)
    if (!PLAIN_ID.test(id)) return false
    const headers = req.headers
    if (headers['content-length'] !== undefined || headers['transfer-encoding'] !== undefined || deps.closing()) return false
    const start = performance.now()
    const hash = authorizationHash(req.socket, headers.authorization)
    if (hash === null) return false
    const caller = deps.tokens.cachedIdentity(hash)
    if (caller === undefined || caller === null) return false
    const now = Date.now()
    const limiter = deps.limiter
    if (limiter !== undefined && !limiter.allows(hash, now)) return false
    const agent = deps.agents.cachedRepresentation(caller.widgetId, id)
    if (agent === undefined) return false

    // Header names, order and values as Fastify writes them for the same request.
    const out = ['x-request-id', requestIdOf(headers)]
    if (limiter !== undefined) {
      const limit = limiter.take(hash, now)
      out.push('ratelimit-limit', String(limit.limit), 'ratelimit-remaining', String(limit.remaining), 'ratelimit-reset', String(limit.resetSeconds))
    }
    out.push('etag', agent.etag)
    const ifNoneMatch = headers['if-none-match']
    let status = 200
    if (ifNoneMatch !== undefined && etagMatches(ifNoneMatch, agent.etag)) {
      // The client has it: 304, no body, so no Content-Type or Content-Length.
      status = 304
      res.writeHead(304, out)
      res.end()
    } else {
      let body = bodies.get(agent)
      if (body === undefined) {
        body = Buffer.from(agentEnvelope(agent.json))
        bodies.set(agent, body)
      }
      out.push('content-type', JSON_TYPE, 'content-length', String(body.length))
      res.writeHead(200, out)
      res.end(body)
    }
    deps.requests.observe('GET', route, status, (performance.now() - start) / 1000)
    deps.answered()
    return true
  }
}
