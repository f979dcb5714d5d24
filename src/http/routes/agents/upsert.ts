import { Type } from 'typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { AgentRoutesOptions } from './index.js'
import { ifMatchOf, withEtag } from './etag.js'
import { AgentSchema, ServiceUserIdParams, UpsertAgentBody, UpsertQuery } from '../../schemas/agent.js'
import { errorResponses } from '../../schemas/envelope.js'

export const upsertAgentRoute: FastifyPluginAsyncTypebox<AgentRoutesOptions> = async (app, { agents }) => {
  app.put('/agents/by-service-user-id/:serviceUserId', {
    schema: {
      summary: 'Create or update an agent by your own id (sync)',
      description: 'Creates the agent with this serviceUserId (name required then) or changes only the fields given. ' +
        'Idempotent: the same call again changes nothing, updatedAt included, and an unchanged avatar URL is not ' +
        'downloaded again unless refreshAvatar=true. `meta.created` says which happened.',
      tags: ['Sync'],
      consumes: ['application/json', 'application/x-www-form-urlencoded', 'multipart/form-data'],
      params: ServiceUserIdParams,
      querystring: UpsertQuery,
      body: UpsertAgentBody,
      response: {
        200: Type.Object({ status: Type.Literal(200), data: AgentSchema, meta: Type.Object({ created: Type.Boolean() }) }),
        ...errorResponses(400, 401, 403, 412, 413, 415, 422, 429)
      }
    }
  }, async (request, reply) => {
    const { agent, created } = await agents.upsertByServiceUserId(request.widgetId, request.params.serviceUserId, request.body, {
      ifMatch: ifMatchOf(request),
      upload: request.avatarUpload,
      refreshAvatar: request.query.refreshAvatar
    })
    withEtag(request, reply, agent)
    return { status: 200 as const, data: agent, meta: { created } }
  })
}
