import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { AgentRoutesOptions } from './index.js'
import { withEtag } from './etag.js'
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
    const agent = await agents.getByServiceUserId(request.widgetId, request.params.serviceUserId)
    if (withEtag(request, reply, agent)) return await reply.code(304).send(undefined)
    return { status: 200 as const, data: agent }
  })
}
