import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { AgentRoutesOptions } from './index.js'
import { ifMatchOf } from './etag.js'
import { AgentParams, AgentSchema } from '../../schemas/agent.js'
import { Ok, errorResponses } from '../../schemas/envelope.js'

export const deleteAgentRoute: FastifyPluginAsyncTypebox<AgentRoutesOptions> = async (app, { agents }) => {
  app.delete('/agents/:id', {
    schema: {
      summary: 'Delete agent',
      description: 'Removes the agent and answers with it as it was. Its avatar files are deleted once no other ' +
        'avatar shares their content. Deleting again is a 404. With If-Match, only if the ETag still matches (412).',
      tags: ['Agent'],
      params: AgentParams,
      response: { 200: Ok(AgentSchema), ...errorResponses(401, 403, 404, 412, 429) }
    }
  }, async (request) => ({ status: 200 as const, data: await agents.delete(request.widgetId, request.params.id, { ifMatch: ifMatchOf(request) }) }))
}
