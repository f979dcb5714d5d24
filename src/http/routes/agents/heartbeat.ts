import { Type } from 'typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { AgentRoutesOptions } from './index.js'
import { withEtag } from './etag.js'
import { AgentParams, AgentSchema } from '../../schemas/agent.js'
import { errorResponses } from '../../schemas/envelope.js'

export const heartbeatRoute: FastifyPluginAsyncTypebox<AgentRoutesOptions> = async (app, { agents }) => {
  app.post('/agents/:id/heartbeat', {
    schema: {
      summary: 'Heartbeat: the agent is here',
      description: 'Marks the agent online until `meta.onlineUntil` (now + PRESENCE_TTL_SECONDS). When heartbeats ' +
        'stop, the agent goes offline by itself at that time (updatedAt becomes that time). Beats that keep an agent ' +
        'online do not move updatedAt. Setting status with PUT still works and ends the expiry.',
      tags: ['Presence'],
      params: AgentParams,
      response: {
        200: Type.Object({ status: Type.Literal(200), data: AgentSchema, meta: Type.Object({ onlineUntil: Type.Integer() }) }),
        ...errorResponses(401, 403, 404, 429)
      }
    }
  }, async (request, reply) => {
    const { agent, onlineUntil } = await agents.heartbeat(request.widgetId, request.params.id)
    withEtag(request, reply, agent)
    return { status: 200 as const, data: agent, meta: { onlineUntil } }
  })
}
