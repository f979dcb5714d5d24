import type { FastifyPluginAsync } from 'fastify'
import type { AgentService } from '../../../agents/service.js'
import type { IdempotencyKeys } from '../../plugins/idempotency.js'
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
  idempotencyKeys: IdempotencyKeys
}

/** The Agent resource: the seed's endpoints and the ones beyond it. */
export const agentRoutes: FastifyPluginAsync<AgentRoutesOptions> = async (app, options) => {
  for (const route of [
    listAgentsRoute, availabilityRoute, getAgentRoute, getByServiceUserIdRoute, createAgentRoute, updateAgentRoute,
    upsertAgentRoute, deleteAgentRoute, heartbeatRoute
  ]) {
    await app.register(route, options)
  }
}
