import type { FastifyPluginAsync } from 'fastify'
import rateLimit from '@fastify/rate-limit'
import type { AgentService } from '../../../agents/service.js'
import type { Db } from '../../../db/index.js'
import { AppError } from '../../../errors/index.js'
import { hashToken, type TokenService } from '../../../tokens/service.js'
import { requireToken, tokenFromHeader } from '../../plugins/auth.js'
import { registerMultipart } from '../../plugins/multipart.js'
import { availabilityRoute } from './availability.js'
import { createAgentRoute } from './create.js'
import { deleteAgentRoute } from './delete.js'
import { getByServiceUserIdRoute } from './get-by-service-user-id.js'
import { getAgentRoute } from './get.js'
import { heartbeatRoute } from './heartbeat.js'
import { listAgentsRoute } from './list.js'
import { updateAgentRoute } from './update.js'
import { upsertAgentRoute } from './upsert.js'

export interface AgentRoutesOptions {
  agents: AgentService
  tokens: TokenService
  db: Db
  rateLimit: { max: number, windowMs: number }
  maxUploadBytes: number
}

/** The Agent resource: the seed's endpoints and the ones beyond it. Every route here needs a widget token. */
export const agentRoutes: FastifyPluginAsync<AgentRoutesOptions> = async (app, options) => {
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
  for (const route of [
    listAgentsRoute, availabilityRoute, getAgentRoute, getByServiceUserIdRoute, createAgentRoute, updateAgentRoute,
    upsertAgentRoute, deleteAgentRoute, heartbeatRoute
  ]) {
    // Not `options` itself: it carries this scope's prefix, which children would apply again.
    await app.register(route, { agents: options.agents, tokens: options.tokens, db: options.db, rateLimit: options.rateLimit, maxUploadBytes: options.maxUploadBytes })
  }
}
