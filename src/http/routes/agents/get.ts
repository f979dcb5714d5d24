import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { AgentRoutesOptions } from './index.js'
import { withEtag } from './etag.js'
import { AgentParams, AgentSchema } from '../../schemas/agent.js'
import { Ok, errorResponses } from '../../schemas/envelope.js'

export const getAgentRoute: FastifyPluginAsyncTypebox<AgentRoutesOptions> = async (app, { agents }) => {
  app.get('/agents/:id', {
    schema: {
      summary: 'Get agent',
      description: 'Carries a strong ETag; If-None-Match with it answers 304.',
      tags: ['Agent'],
      params: AgentParams,
      response: { 200: Ok(AgentSchema), 304: { type: 'null', description: 'Not modified' }, ...errorResponses(401, 404, 429) }
    }
  }, async (request, reply) => {
    const agent = await agents.get(request.widgetId, request.params.id)
    if (withEtag(request, reply, agent)) return await reply.code(304).send(null)
    return { status: 200 as const, data: agent }
  })
}
