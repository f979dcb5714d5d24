import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { AgentRoutesOptions } from './index.js'
import { AgentParams, AgentSchema } from '../../schemas/agent.js'
import { Ok, errorResponses } from '../../schemas/envelope.js'

export const getAgentRoute: FastifyPluginAsyncTypebox<AgentRoutesOptions> = async (app, { agents }) => {
  app.get('/agents/:id', {
    schema: {
      summary: 'Get agent',
      tags: ['Agent'],
      params: AgentParams,
      response: { 200: Ok(AgentSchema), ...errorResponses(401, 404) }
    }
  }, async (request) => ({ status: 200 as const, data: await agents.get(request.widgetId, request.params.id) }))
}
