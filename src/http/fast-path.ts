import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http'
import type { FastifyBaseLogger } from 'fastify'
import { etagMatches, type AgentService } from '../agents/service.js'
import type { AgentRepresentation, CachedList } from '../agents/read-cache.js'
import type { RequestMetrics } from '../metrics/requests.js'
import type { TokenService } from '../tokens/service.js'
import { authorizationHash } from './plugins/auth.js'
import type { RateLimiter } from '../ratelimit/limiter.js'
import { requestIdOf } from './request-id.js'
import { agentEnvelope } from './routes/agents/etag.js'
import { listCacheKey } from './routes/agents/list.js'
import { isAppError } from '../errors/index.js'
import { envelope, RETRY_AFTER_SECONDS, serverError } from './error-handler.js'

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
  /** Where a failed read is logged (as the usual way's error handler logs it). */
  log: FastifyBaseLogger
  /** Whether a path is a GET route of its own (`/agents/availability`), which the router prefers to `/agents/:id`. */
  isOtherRoute: (path: string) => boolean
}

/**
 * Takes a request and answers it, or declines it (false) without touching it. One it took may
 * still be handed to `usualWay` (Fastify's handler) later, untouched, once it knows it cannot
 * answer it (a GET has no body to have been read meanwhile).
 */
export type FastPath = (req: IncomingMessage, res: ServerResponse, usualWay: (req: IncomingMessage, res: ServerResponse) => void) => boolean

const JSON_TYPE = 'application/json; charset=utf-8'

/** The id in a path: what find-my-way would take as the `:id` parameter as is (no decoding, no `;`). */
const PLAIN_ID = /^[0-9A-Za-z_-]{1,200}$/

/**
 * `GET /agents/:id` answered before Fastify sees the request. It does what the usual way does for
 * such a request, in the same order and with the same bytes out (test/fast-path.test.ts compares
 * the two, header by header, on both stores): the token's rate limit is counted, the token checked,
 * the request id taken or made, the agent read the same way (AgentService.getRepresentation: from
 * the read cache on SQLite when it has the agent, else from the database, batched with the reads
 * arriving with it on PostgreSQL), its ETag and the agent sent in the envelope (or 304 when
 * If-None-Match has its ETag, or the error envelope: 404 for no such agent, 500 when the read
 * failed, logged), the request counted in the metrics. Answered from memory, it is answered at
 * once, before the next request is read. What it declines goes the usual way, unchanged: anything
 * but a plain GET of one agent (HEAD, a query string, a body, an encoded id, the path of another
 * route such as `/agents/availability`), an unknown or uncached token (the usual way then checks it
 * and caches it), a limit reached, shutdown.
 *
 * `GET /agents` with no query string is answered here too, but only when the read cache holds the
 * whole answer (SQLite, nothing written since: AgentService.cachedList), or on PostgreSQL when one
 * is kept and its check finds its rows unchanged (AgentService.checkedList); the usual way made it,
 * and it is sent with the same headers the usual way sends with it. Otherwise it goes the usual
 * way, which reads the list and keeps it: at once, or on PostgreSQL after a check that failed
 * (nothing was counted or sent for it here, and the usual way counts the miss).
 *
 * Why: Fastify's request lifecycle (request and reply objects, five hooks, parameter validation, an
 * async handler, header normalisation) costs ~25 µs of CPU per request on a 2-core VM, against
 * ~16 µs for node:http alone answering the same bytes from memory (BENCHMARKS.md): most of a read
 * from the read cache, and ~15% of one from PostgreSQL. It is only used where no request line is
 * logged (LOG_LEVEL above info): at info every request writes two log lines, which cost more than
 * this saves, and those lines are Fastify's.
 */
export function agentFastPath (deps: FastPathDeps): FastPath {
  const list = `${deps.prefix}/agents`
  const base = `${list}/`
  const route = `${deps.prefix}/agents/:id`
  const bodies = new WeakMap<AgentRepresentation, Buffer>()

  /** Writes the answer; `out` holds the headers so far, in Fastify's order. */
  const send = (res: ServerResponse, out: string[], start: number, agent: AgentRepresentation, ifNoneMatch: string | undefined): void => {
    out.push('etag', agent.etag)
    let status = 200
    if (ifNoneMatch !== undefined && etagMatches(ifNoneMatch, agent.etag)) {
      // The client has it: 304, no body, so no Content-Type or Content-Length.
      status = 304
      if (deps.closing()) out.push('connection', 'close')
      res.writeHead(304, out)
      res.end()
    } else {
      let body = bodies.get(agent)
      if (body === undefined) {
        body = Buffer.from(agentEnvelope(agent.json))
        bodies.set(agent, body)
      }
      end(res, out, 200, body)
    }
    counted(status, start)
  }

  /** The error envelope, as the usual way's error handler makes it. */
  const fail = (res: ServerResponse, out: string[], start: number, err: unknown): void => {
    const appErr = isAppError(err) ? err : serverError(err)
    if (appErr.statusCode >= 500) deps.log.error({ reqId: out[1], err }, 'request failed')
    if (appErr.statusCode === 503) out.push('retry-after', String(RETRY_AFTER_SECONDS))
    end(res, out, appErr.statusCode, Buffer.from(JSON.stringify(envelope(appErr))))
    counted(appErr.statusCode, start)
  }

  const end = (res: ServerResponse, out: string[], status: number, body: Buffer): void => {
    out.push('content-type', JSON_TYPE)
    // Fastify's onSend hook adds it during shutdown, after the content type (see buildApp).
    if (deps.closing()) out.push('connection', 'close')
    out.push('content-length', String(body.length))
    res.writeHead(status, out)
    res.end(body)
  }

  const observeOne = deps.requests.forRoute('GET', route)
  const observeList = deps.requests.forRoute('GET', list)
  const counted = (status: number, start: number, isList = false): void => {
    (isList ? observeList : observeOne)(status, (performance.now() - start) / 1000)
    deps.answered()
  }

  /** The first headers of an answer, as Fastify writes them: the request id, then the rate limit counted. */
  const opening = (headers: IncomingHttpHeaders, hash: string, now: number): string[] => {
    const out = ['x-request-id', requestIdOf(headers)]
    const limiter = deps.limiter
    if (limiter !== undefined) {
      const limit = limiter.take(hash, now)
      out.push('ratelimit-limit', String(limit.limit), 'ratelimit-remaining', String(limit.remaining), 'ratelimit-reset', String(limit.resetSeconds))
    }
    return out
  }

  return (req, res, usualWay) => {
    if (req.method !== 'GET') return false
    const url = req.url ?? ''
    const isList = url === list || url === `${list}/`
    let id = ''
    if (!isList) {
      if (!url.startsWith(base)) return false
      id = url.slice(base.length)
      if (id.endsWith('/')) id = id.slice(0, -1)
      if (!PLAIN_ID.test(id) || deps.isOtherRoute(base + id)) return false
    }
    const headers = req.headers
    if (headers['content-length'] !== undefined || headers['transfer-encoding'] !== undefined || deps.closing()) return false
    const start = performance.now()
    const hash = authorizationHash(req.socket, headers.authorization)
    if (hash === null) return false
    const caller = deps.tokens.cachedIdentity(hash)
    if (caller === undefined || caller === null) return false
    const now = Date.now()
    if (deps.limiter !== undefined && !deps.limiter.allows(hash, now)) return false

    if (isList) {
      // Only a list kept whole (SQLite, nothing written since; PostgreSQL, checked); any other goes the usual way.
      const key = listCacheKey(url, {})
      const sendList = (kept: CachedList): void => {
        const out = opening(headers, hash, Date.now())
        if (kept.link !== undefined) out.push('link', kept.link)
        end(res, out, 200, kept.body)
        counted(200, start, true)
      }
      const kept = deps.agents.cachedList(caller.widgetId, key, false)
      if (kept !== undefined) {
        sendList(kept)
        return true
      }
      if (!deps.agents.keepsCheckedList(caller.widgetId, key)) return false
      deps.agents.checkedList(caller.widgetId, key, {}, false)
        // A failed check too: the usual way checks again, and answers the error if it fails again.
        // So does a request whose limit other requests reached during the check (429), or one
        // that met the start of shutdown (503): it is counted when it is answered, and only once.
        .then((checked) => {
          if (checked === undefined || deps.closing() || (deps.limiter !== undefined && !deps.limiter.allows(hash, Date.now()))) usualWay(req, res)
          else sendList(checked)
        }, () => { usualWay(req, res) })
        .catch((err: unknown) => {
          deps.log.error({ err }, 'answer not sent')
          res.destroy()
        })
      return true
    }

    // Header names, order and values as Fastify writes them for the same request.
    const out = opening(headers, hash, now)
    const ifNoneMatch = headers['if-none-match']
    const cached = deps.agents.cachedRepresentation(caller.widgetId, id)
    if (cached !== undefined) {
      send(res, out, start, cached, ifNoneMatch)
      return true
    }
    deps.agents.getRepresentation(caller.widgetId, id)
      .then((agent) => { send(res, out, start, agent, ifNoneMatch) }, (err: unknown) => { fail(res, out, start, err) })
      .catch((err: unknown) => {
        // Writing the answer threw (the connection is gone, say): nothing more can be sent.
        deps.log.error({ reqId: out[1], err }, 'answer not sent')
        res.destroy()
      })
    return true
  }
}
