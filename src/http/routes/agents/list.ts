import { Type } from 'typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { AgentRoutesOptions } from './index.js'
import { AgentSchema, ListMeta, ListQuery } from '../../schemas/agent.js'
import { errorResponses } from '../../schemas/envelope.js'

export const listAgentsRoute: FastifyPluginAsyncTypebox<AgentRoutesOptions> = async (app, { agents }) => {
  app.get('/agents', {
    schema: {
      summary: 'Get all agents',
      description: "The widget's agents, newest first (agents created in the same second: the later one first). " +
        'Without limit or cursor the whole list comes back, as in the seed. With either, pages of `limit` agents ' +
        'come back with `meta.nextCursor` and a `Link: <…>; rel="next"` header; a cursor stays correct while agents ' +
        'are created or updated between pages. Filters combine with AND.',
      tags: ['Agent'],
      querystring: ListQuery,
      response: {
        200: Type.Object({ status: Type.Literal(200), data: Type.Array(AgentSchema), meta: Type.Optional(ListMeta) }),
        ...errorResponses(400, 401, 429)
      }
    }
  }, async (request, reply) => {
    const page = await agents.list(request.widgetId, request.query)
    if (page.nextCursor === undefined || page.limit === undefined) return { status: 200 as const, data: page.agents }
    if (page.nextCursor !== null) {
      const params = Object.entries({ ...request.query, limit: page.limit, cursor: page.nextCursor }).map(([k, v]): [string, string] => [k, String(v)])
      const next = new URLSearchParams(params)
      void reply.header('link', `<${request.url.split('?')[0] ?? ''}?${next.toString()}>; rel="next"`)
    }
    return { status: 200 as const, data: page.agents, meta: { nextCursor: page.nextCursor, limit: page.limit } }
  })
}
