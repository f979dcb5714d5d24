import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { AgentRoutesOptions } from './index.js'
import { AgentParams, AgentSchema, UpdateAgentBody } from '../../schemas/agent.js'
import { Ok, errorResponses } from '../../schemas/envelope.js'

export const updateAgentRoute: FastifyPluginAsyncTypebox<AgentRoutesOptions> = async (app, { agents }) => {
  app.put('/agents/:id', {
    schema: {
      summary: 'Update agent',
      description: 'Changes only the fields given; `avatar: null` or `""` removes the avatar. ' +
        'A request that changes nothing leaves updatedAt as it was.',
      tags: ['Agent'],
      consumes: ['application/json', 'application/x-www-form-urlencoded'],
      params: AgentParams,
      body: UpdateAgentBody,
      response: { 200: Ok(AgentSchema), ...errorResponses(400, 401, 404, 409, 413, 415, 422) }
    }
  }, async (request) => ({ status: 200 as const, data: await agents.update(request.widgetId, request.params.id, request.body) }))
}
