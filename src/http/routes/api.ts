import type { FastifyPluginAsync } from 'fastify'
import type { AgentService } from '../../agents/service.js'
import type { EventStreams } from '../../events/stream.js'
import type { TokenService } from '../../tokens/service.js'
import type { WebhookService } from '../../webhooks/service.js'
import { decorateTokenHash, requireToken } from '../plugins/auth.js'
import { registerRateLimit } from '../plugins/rate-limit.js'
import type { RateLimiter } from '../../ratelimit/limiter.js'
import type { IdempotencyKeys } from '../plugins/idempotency.js'
import { registerMultipart } from '../plugins/multipart.js'
import { agentRoutes } from './agents/index.js'
import { eventRoutes } from './events/index.js'
import { webhookRoutes } from './webhooks/index.js'

export interface ApiOptions {
  agents: AgentService
  tokens: TokenService
  webhooks: WebhookService
  streams: EventStreams
  /** Undefined: no rate limits. */
  rateLimiter: RateLimiter | undefined
  maxUploadBytes: number
  idempotencyKeys: IdempotencyKeys
}

/**
 * The token-authenticated API under /api/external/v1: per-token rate limits, then the token check
 * (which also refuses writes with read tokens), then the resources.
 */
export const apiRoutes: FastifyPluginAsync<ApiOptions> = async (app, options) => {
  decorateTokenHash(app)
  if (options.rateLimiter !== undefined) registerRateLimit(app, options.rateLimiter, options.tokens)
  requireToken(app, options.tokens)
  await registerMultipart(app, options.maxUploadBytes)
  app.addHook('onRoute', (route) => {
    route.schema = { ...route.schema, security: [{ token: [] }] }
  })
  await app.register(agentRoutes, { agents: options.agents, idempotencyKeys: options.idempotencyKeys })
  await app.register(eventRoutes, { streams: options.streams, tokens: options.tokens })
  await app.register(webhookRoutes, { webhooks: options.webhooks })
}
