import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { AgentRoutesOptions } from './index.js'
import { AgentSchema, CreateAgentBody } from '../../schemas/agent.js'
import { Ok, errorResponses } from '../../schemas/envelope.js'

export const createAgentRoute: FastifyPluginAsyncTypebox<AgentRoutesOptions> = async (app, { agents }) => {
  app.post('/agents', {
    schema: {
      summary: 'Create agent',
      description: 'Requires serviceUserId and name. Defaults: status "offline", active true, avatar null. ' +
        'An avatar URL is downloaded, checked and stored before the answer. Answers HTTP 200, as the seed does.',
      tags: ['Agent'],
      consumes: ['application/json', 'application/x-www-form-urlencoded'],
      body: CreateAgentBody,
      response: { 200: Ok(AgentSchema), ...errorResponses(400, 401, 409, 413, 415, 422) }
    }
  }, async (request) => ({ status: 200 as const, data: await agents.create(request.widgetId, request.body) }))
}
