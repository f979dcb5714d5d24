import type { FastifyPluginAsync } from 'fastify'
import rateLimit from '@fastify/rate-limit'
import type { AgentService } from '../../agents/service.js'
import type { Db } from '../../db/index.js'
import { AppError } from '../../errors/index.js'
import type { EventStreams } from '../../events/stream.js'
import { hashToken, type TokenService } from '../../tokens/service.js'
import type { WebhookService } from '../../webhooks/service.js'
import { requireToken, tokenFromHeader } from '../plugins/auth.js'
import { registerMultipart } from '../plugins/multipart.js'
import { agentRoutes } from './agents/index.js'
import { eventRoutes } from './events/index.js'
import { webhookRoutes } from './webhooks/index.js'

export interface ApiOptions {
  agents: AgentService
  tokens: TokenService
  webhooks: WebhookService
  streams: EventStreams
  db: Db
  rateLimit: { max: number, windowMs: number }
  maxUploadBytes: number
}

/**
 * The token-authenticated API under /api/external/v1: per-token rate limits, then the token check
 * (which also refuses writes with read tokens), then the resources.
 */
export const apiRoutes: FastifyPluginAsync<ApiOptions> = async (app, options) => {
  if (options.rateLimit.max > 0) {
    // Before the token check, so guessing tokens is limited too. Keyed by the token's hash (never the token).
    await app.register(rateLimit, {
      global: true,
      max: options.rateLimit.max,
      timeWindow: options.rateLimit.windowMs,
      hook: 'onRequest',
      enableDraftSpec: true,
      keyGenerator: (request) => {
        const token = tokenFromHeader(request.headers.authorization)
        return token === undefined ? `ip:${request.ip}` : `token:${hashToken(token)}`
      },
      errorResponseBuilder: (_request, context) => new AppError('rate_limited', `Too many requests for this token: at most ${context.max} per ${context.after}. Retry after the time in the Retry-After header.`)
    })
  }
  requireToken(app, options.tokens)
  await registerMultipart(app, options.maxUploadBytes)
  app.addHook('onRoute', (route) => {
    route.schema = { ...route.schema, security: [{ token: [] }] }
  })
  await app.register(agentRoutes, { agents: options.agents, db: options.db })
  await app.register(eventRoutes, { streams: options.streams })
  await app.register(webhookRoutes, { webhooks: options.webhooks })
}
