import { createServer, STATUS_CODES, type ServerOptions } from 'node:http'
import type { Duplex } from 'node:stream'
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyServerOptions } from 'fastify'
import { Ajv, type Options as AjvOptions } from 'ajv'
import type { Config } from '../config/index.js'
import { AppError } from '../errors/index.js'
import type { AgentService } from '../agents/service.js'
import type { DbHandle } from '../db/index.js'
import type { EventStreams } from '../events/stream.js'
import type { WebhookService } from '../webhooks/service.js'
import type { TokenService } from '../tokens/service.js'
import type { BlobStore } from '../storage/blob-store.js'
import type { Metrics } from '../metrics/index.js'
import { envelope, registerErrorHandling, serverError } from './error-handler.js'
import { agentFastPath, type FastPath } from './fast-path.js'
import { staticFastPath } from './static-cache.js'
import { LocalBlobStore } from '../storage/local.js'
import { lazyChildLoggerFactory } from './lazy-logger.js'
import { registerBodyParsers } from './plugins/body-parsers.js'
import type { IdempotencyKeys } from './plugins/idempotency.js'
import { registerMetrics } from './plugins/metrics.js'
import { registerOpenApi } from './plugins/openapi.js'
import type { RateLimiter } from '../ratelimit/limiter.js'
import { registerStaticFiles } from './plugins/static.js'
import { registerAdminConsole } from './plugins/admin.js'
import { apiRoutes } from './routes/api.js'
import { healthRoutes } from './routes/health.js'
import { requestIdOf } from './request-id.js'
import { ErrorEnvelope } from './schemas/envelope.js'

export interface AppDeps {
  config: Config
  agents: AgentService
  tokens: TokenService
  webhooks: WebhookService
  streams: EventStreams
  idempotencyKeys: IdempotencyKeys
  database: DbHandle
  store: BlobStore
  metrics: Metrics
  /** Undefined when rate limits are off. */
  rateLimiter: RateLimiter | undefined
  checkReady: () => Promise<void>
  version: string
  /** Pino options, or false for silence; defaults to JSON lines at config.logLevel. */
  logger?: FastifyServerOptions['logger']
}

const API_PREFIX = '/api/external/v1'

/**
 * What Node refuses before a request exists (headers over 16 KiB, a request not sent whole within
 * REQUEST_TIMEOUT_MS, bytes that are not HTTP), answered in the envelope like everything else, and
 * the connection closed (what was sent may have stopped anywhere).
 */
function answerClientError (this: FastifyInstance, err: NodeJS.ErrnoException, socket: Duplex): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return
  const appErr = err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
    ? new AppError('request_timeout', 'The request was not sent whole in time (REQUEST_TIMEOUT_MS); nothing was done.')
    : err.code === 'HPE_HEADER_OVERFLOW'
      ? new AppError('headers_too_large', 'The request line and headers are larger than the server accepts (16 KiB); nothing was done.')
      : new AppError('malformed_request', 'The request is not valid HTTP/1.1; nothing was done.')
  this.log.debug({ err }, 'connection refused before a request')
  if (socket.writable) {
    const body = JSON.stringify(envelope(appErr))
    socket.write(`HTTP/1.1 ${appErr.statusCode} ${STATUS_CODES[appErr.statusCode] ?? ''}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json; charset=utf-8\r\nConnection: close\r\n\r\n${body}`)
  }
  socket.destroy(err)
}

/** What Fastify sets on the server it makes, as it passes them to a serverFactory. */
interface ServerTimeouts {
  http?: ServerOptions
  keepAliveTimeout: number
  requestTimeout: number
  connectionTimeout: number
  maxRequestsPerSocket: number
}

const ajvBase: AjvOptions = { allErrors: true, strict: false, removeAdditional: false, useDefaults: false }
// JSON bodies are strict: `active` must be a JSON boolean, the rest strings. Form bodies get their
// booleans converted by the form parser, never by coercion here.
const bodyAjv = new Ajv({ ...ajvBase, coerceTypes: false })
const otherAjv = new Ajv({ ...ajvBase, coerceTypes: 'array' })

/** Builds the HTTP application around its dependencies; listening is the caller's business. */
export async function buildApp (deps: AppDeps): Promise<FastifyInstance> {
  const { config } = deps
  // Set once the routes are registered; see agentFastPath and staticFastPath.
  let fastPath: FastPath | undefined
  const app = Fastify({
    logger: deps.logger ?? {
      level: config.logLevel,
      redact: { paths: ['req.headers.authorization', 'req.headers.cookie'], remove: true }
    },
    childLoggerFactory: lazyChildLoggerFactory,
    bodyLimit: config.bodyLimitBytes,
    // Node's own default, which Fastify turns off (0): a client trickling a body (an upload at a byte
    // a minute) would hold its connection and what it sent for ever.
    requestTimeout: config.requestTimeoutMs,
    trustProxy: config.trustProxy === false ? false : [...config.trustProxy],
    requestIdHeader: false,
    genReqId: (req) => requestIdOf(req.headers),
    // The server Fastify would make (same timeouts), with the answers from memory ahead of it.
    serverFactory: (handler, options) => {
      // Fastify has filled in its defaults by now.
      const opts = options as unknown as ServerTimeouts
      // Node checks for requests past their time every connectionsCheckingInterval (30 s by default):
      // often enough for the timeout given.
      const checkEveryMs = opts.requestTimeout > 0 ? Math.min(30_000, Math.max(250, Math.floor(opts.requestTimeout / 4))) : 30_000
      // The request timeout is given here: set on the server afterwards, Node 20 never applies it. The
      // headers' own timeout stays Node's 60 s (or the request's, if shorter) even with none for requests.
      const server = createServer({
        ...opts.http,
        requestTimeout: opts.requestTimeout,
        headersTimeout: opts.requestTimeout > 0 ? Math.min(60_000, opts.requestTimeout) : 60_000,
        connectionsCheckingInterval: checkEveryMs
      }, (req, res) => {
        if (fastPath === undefined || !fastPath(req, res, handler)) handler(req, res)
      })
      server.keepAliveTimeout = opts.keepAliveTimeout
      server.setTimeout(opts.connectionTimeout)
      if (opts.maxRequestsPerSocket > 0) server.maxRequestsPerSocket = opts.maxRequestsPerSocket
      return server
    },
    // Our own hook below answers 503 during shutdown, in the envelope rather than Fastify's body.
    return503OnClosing: false,
    clientErrorHandler: answerClientError,
    forceCloseConnections: 'idle',
    // A path parameter's length is counted as the router sees it: percent-decoded except for the
    // reserved characters (`/`, `?`, `%`, ...), which stay encoded. A serviceUserId (255 characters
    // at most) of reserved characters only is 765 long there; longer ones are refused by the schemas.
    routerOptions: { ignoreTrailingSlash: true, maxParamLength: 768 },
    // What the router refuses before any route (a path that is not valid percent-encoding, a path
    // segment longer than the above), in the envelope like every other answer.
    frameworkErrors: (err, request, reply) => {
      const appErr = err.code === 'FST_ERR_BAD_URL'
        ? new AppError('validation_failed', 'The request path is not valid percent-encoding (each % must be followed by two hex digits); encode path segments with encodeURIComponent.')
        : err.code === 'FST_ERR_MAX_PARAM_LENGTH'
          ? new AppError('validation_failed', 'A segment of the request path is longer than any id this API accepts.')
          : serverError(err)
      if (appErr.statusCode >= 500) request.log.error({ err }, 'request failed')
      void (reply as FastifyReply).header('x-request-id', request.id).status(appErr.statusCode).send(envelope(appErr))
    }
  })

  app.setValidatorCompiler(({ schema, httpPart }) =>
    (httpPart === 'body' ? bodyAjv : otherAjv).compile(schema))
  let closing = false
  app.addHook('preClose', async () => {
    closing = true
    // Open event streams would hold close() forever; clients reconnect with their Last-Event-ID.
    deps.streams.closeAll()
  })
  // Requests in flight when shutdown starts finish, and their keep-alive connections close with
  // them, so close() does not wait on idle clients.
  // (Callback hooks, not async ones: they run on every request, and a promise each adds up.)
  app.addHook('onSend', (_request, reply, payload, done) => {
    if (closing) void reply.header('connection', 'close')
    done(null, payload)
  })
  app.addHook('onRequest', (request, reply, done) => {
    void reply.header('x-request-id', request.id)
    if (closing) {
      void reply.header('connection', 'close')
      done(new AppError('service_unavailable', 'The service is shutting down; retry the request, another instance (or this one, restarted) will answer.'))
      return
    }
    done()
  })

  // Every GET route's path as registered: a path the fast path could take for `/agents/:id` may be
  // another route's (`/agents/availability`), which the router prefers.
  const getPaths = new Set<string>()
  app.addHook('onRoute', (route) => {
    if (([] as string[]).concat(route.method).includes('GET')) getPaths.add(route.url)
  })
  app.addSchema(ErrorEnvelope)
  registerErrorHandling(app)
  registerMetrics(app, deps.metrics, config.metricsToken)
  await registerBodyParsers(app)
  await registerOpenApi(app, deps.version)

  await app.register(healthRoutes, { checkReady: deps.checkReady })
  const rateLimiter = deps.rateLimiter
  await app.register(apiRoutes, {
    prefix: API_PREFIX,
    agents: deps.agents,
    tokens: deps.tokens,
    webhooks: deps.webhooks,
    streams: deps.streams,
    rateLimiter,
    maxUploadBytes: config.avatar.maxBytes,
    idempotencyKeys: deps.idempotencyKeys
  })
  await registerStaticFiles(app, deps.store)
  await registerAdminConsole(app, config)
  if (!logsEveryRequest(app)) {
    const paths: FastPath[] = [agentFastPath({
      prefix: API_PREFIX,
      agents: deps.agents,
      tokens: deps.tokens,
      limiter: rateLimiter,
      requests: deps.metrics.requests,
      closing: () => closing,
      answered: deps.metrics.fastAnswered,
      log: app.log,
      isOtherRoute: (path) => getPaths.has(path)
    })]
    const store = deps.store
    if (store instanceof LocalBlobStore && config.staticCacheBytes > 0) {
      paths.push(staticFastPath({ pathOf: (key) => store.pathOf(key), maxBytes: config.staticCacheBytes, requests: deps.metrics.requests, closing: () => closing, answered: deps.metrics.fastAnswered }))
    }
    fastPath = (req, res, usualWay) => paths.some((answer) => answer(req, res, usualWay))
  }
  return app
}

/** Whether Fastify writes a log line for every request (pino at `info` or below). */
function logsEveryRequest (app: FastifyInstance): boolean {
  const log = app.log as { isLevelEnabled?: (level: string) => boolean }
  return typeof log.isLevelEnabled === 'function' && log.isLevelEnabled('info')
}
