import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { AgentRoutesOptions } from './index.js'
import { sendAgentJson, setEtag } from './etag.js'
import { AgentSchema, ServiceUserIdParams } from '../../schemas/agent.js'
import { NotModified, Ok, errorResponses } from '../../schemas/envelope.js'

export const getByServiceUserIdRoute: FastifyPluginAsyncTypebox<AgentRoutesOptions> = async (app, { agents }) => {
  app.get('/agents/by-service-user-id/:serviceUserId', {
    schema: {
      summary: 'Get agent by your own id',
      description: 'The agent with this serviceUserId. ETag and If-None-Match as for GET /agents/:id.',
      tags: ['Sync'],
      params: ServiceUserIdParams,
      response: { 200: Ok(AgentSchema), 304: NotModified, ...errorResponses(401, 404, 429) }
    }
  }, async (request, reply) => {
    // As GET /agents/:id: the agent comes as JSON already (from memory when the read cache has it).
    const { json, etag } = await agents.getRepresentationByServiceUserId(request.widgetId, request.params.serviceUserId)
    if (setEtag(request, reply, etag)) return await reply.code(304).send(undefined)
    return await sendAgentJson(reply, json)
  })
}
