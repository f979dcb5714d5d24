import type { FastifyPluginAsync } from 'fastify'
import type { AgentService } from '../../../agents/service.js'
import type { TokenService } from '../../../tokens/service.js'
import { requireToken } from '../../plugins/auth.js'
import { createAgentRoute } from './create.js'
import { getAgentRoute } from './get.js'
import { listAgentsRoute } from './list.js'
import { updateAgentRoute } from './update.js'

export interface AgentRoutesOptions {
  agents: AgentService
  tokens: TokenService
}

/** The seed's Agent resource. Every route in this scope needs a widget token. */
export const agentRoutes: FastifyPluginAsync<AgentRoutesOptions> = async (app, options) => {
  const deps = { agents: options.agents, tokens: options.tokens }
  requireToken(app, deps.tokens)
  app.addHook('onRoute', (route) => {
    route.schema = { ...route.schema, security: [{ token: [] }] }
  })
  await app.register(listAgentsRoute, deps)
  await app.register(getAgentRoute, deps)
  await app.register(createAgentRoute, deps)
  await app.register(updateAgentRoute, deps)
}
