import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { AgentRoutesOptions } from './index.js'
import { sendAgentJson, setEtag } from './etag.js'
import { AgentParams, AgentSchema } from '../../schemas/agent.js'
import { NotModified, Ok, errorResponses } from '../../schemas/envelope.js'

export const getAgentRoute: FastifyPluginAsyncTypebox<AgentRoutesOptions> = async (app, { agents }) => {
  app.get('/agents/:id', {
    schema: {
      summary: 'Get agent',
      description: 'Carries a strong ETag; If-None-Match with it answers 304.',
      tags: ['Agent'],
      params: AgentParams,
      response: { 200: Ok(AgentSchema), 304: NotModified, ...errorResponses(401, 404, 429) }
    }
  }, async (request, reply) => {
    // The hottest route: the agent comes as JSON already (often from memory), so it is sent as is.
    const { json, etag } = await agents.getRepresentation(request.widgetId, request.params.id)
    if (setEtag(request, reply, etag)) return await reply.code(304).send(undefined)
    return await sendAgentJson(reply, json)
  })
}
