import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { AgentRoutesOptions } from './index.js'
import { ifMatchOf, sendAgent } from './etag.js'
import { AgentParams, AgentSchema, UpdateAgentBody } from '../../schemas/agent.js'
import { Ok, errorResponses } from '../../schemas/envelope.js'

export const updateAgentRoute: FastifyPluginAsyncTypebox<AgentRoutesOptions> = async (app, { agents }) => {
  app.put('/agents/:id', {
    schema: {
      summary: 'Update agent',
      description: 'Changes only the fields given; `avatar: null` or `""` removes the avatar. ' +
        'A request that changes nothing leaves updatedAt as it was. With If-Match, the update happens only if the ' +
        "agent's ETag still matches (412 otherwise). multipart/form-data may carry the avatar as a file.",
      tags: ['Agent'],
      consumes: ['application/json', 'application/x-www-form-urlencoded', 'multipart/form-data'],
      params: AgentParams,
      body: UpdateAgentBody,
      response: { 200: Ok(AgentSchema), ...errorResponses(400, 401, 403, 404, 409, 412, 413, 415, 422, 429) }
    }
  }, async (request, reply) => {
    const agent = await agents.update(request.widgetId, request.params.id, request.body, { ifMatch: ifMatchOf(request), upload: request.avatarUpload })
    return await sendAgent(reply, agent)
  })
}
