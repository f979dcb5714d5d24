import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { AgentRoutesOptions } from './index.js'
import { withEtag } from './etag.js'
import { AgentSchema, CreateAgentBody, type Agent } from '../../schemas/agent.js'
import { Ok, errorResponses } from '../../schemas/envelope.js'
import { idempotencyKeyOf, requestFingerprint, type KeepAnswer } from '../../plugins/idempotency.js'

export const createAgentRoute: FastifyPluginAsyncTypebox<AgentRoutesOptions> = async (app, { agents, idempotencyKeys }) => {
  app.post('/agents', {
    schema: {
      summary: 'Create agent',
      description: 'Requires serviceUserId and name. Defaults: status "offline", active true, avatar null. ' +
        'An avatar URL is downloaded, checked and stored before the answer; with multipart/form-data, `avatar` may ' +
        'be the image file itself. Answers HTTP 200, as the seed does. With an Idempotency-Key header, a retry ' +
        'with the same key and body gets the first answer (header Idempotent-Replayed: true) and creates nothing.',
      tags: ['Agent'],
      consumes: ['application/json', 'application/x-www-form-urlencoded', 'multipart/form-data'],
      body: CreateAgentBody,
      response: { 200: Ok(AgentSchema), ...errorResponses(400, 401, 403, 409, 413, 415, 422, 429) }
    }
  }, async (request, reply) => {
    type Answer = { status: 200, data: Agent }
    const create = async (keep?: KeepAnswer<Answer>): Promise<Answer> => ({
      status: 200 as const,
      data: await agents.create(request.widgetId, request.body, {
        upload: request.avatarUpload,
        alsoInTransaction: keep === undefined ? undefined : async (trx, agent) => { await keep(trx, { status: 200, data: agent }) }
      })
    })
    const key = idempotencyKeyOf(request)
    let result = key === undefined ? await create() : undefined
    if (key !== undefined) {
      const outcome = await idempotencyKeys.run(request.widgetId, key, requestFingerprint(request.body, request.avatarUpload), create)
      if (outcome.replayed) void reply.header('idempotent-replayed', 'true')
      result = outcome.payload
    }
    withEtag(request, reply, result!.data)
    return result!
  })
}
