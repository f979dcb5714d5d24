import { Readable } from 'node:stream'
import { Type } from 'typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { AgentRoutesOptions } from './index.js'
import { AgentSchema, ListMeta, ListQuery } from '../../schemas/agent.js'
import { errorResponses } from '../../schemas/envelope.js'
import { sendJson } from './etag.js'

/** Names a list answer in the cache: the path asked for (the Link header is made of it) and the query as validated. */
export function listCacheKey (path: string, query: object): string {
  return `${path}?${JSON.stringify(query)}`
}

export const listAgentsRoute: FastifyPluginAsyncTypebox<AgentRoutesOptions> = async (app, { agents }) => {
  app.get('/agents', {
    schema: {
      summary: 'Get all agents',
      description: "The widget's agents, newest first (agents created in the same second: the later one first). " +
        'Without limit or cursor the whole list comes back, as in the seed; a long one is sent as it is read, in ' +
        'chunks, so an agent created or deleted while it is being sent may or may not be in it. With limit or cursor, ' +
        'pages of `limit` agents come back with `meta.nextCursor` and a `Link: <…>; rel="next"` header; a cursor stays ' +
        'correct while agents are created or updated between pages. Filters combine with AND.',
      tags: ['Agent'],
      querystring: ListQuery,
      response: {
        200: Type.Object({ status: Type.Literal(200), data: Type.Array(AgentSchema), meta: Type.Optional(ListMeta) }),
        ...errorResponses(400, 401, 429)
      }
    }
  }, async (request, reply) => {
    const { limit, cursor, ...filters } = request.query
    // Answered from memory while nothing was written (SQLite; see AgentReadCache).
    const path = request.url.split('?')[0] ?? ''
    const key = listCacheKey(path, request.query)
    // Or, on PostgreSQL, after one short query has found its rows unchanged (see CheckedLists).
    const cached = agents.cachedList(request.widgetId, key) ?? await agents.checkedList(request.widgetId, key, request.query)
    if (cached !== undefined) {
      if (cached.link !== undefined) void reply.header('link', cached.link)
      return await sendJson(reply, cached.body)
    }
    const ticket = agents.listTicket(request.widgetId)
    if (limit === undefined && cursor === undefined) {
      // The first batch is read before anything is sent: a failure there is still an error envelope.
      const batches = agents.listAll(request.widgetId, filters)
      const first = await batches.next()
      const head = first.done === true ? '' : first.value.items.join(',')
      if (first.done === true || !first.value.more) {
        const body = Buffer.from(`{"status":200,"data":[${head}]}`)
        await agents.keepList(request.widgetId, key, { body, link: undefined }, ticket, first.done === true ? undefined : first.value.tags)
        return await sendJson(reply, body)
      }
      // A long list goes out batch by batch as the client takes it (Readable.from waits for the socket
      // to drain). Should a later batch fail, the response is cut short, never completed as valid JSON.
      return await sendJson(reply, Readable.from((async function * () {
        yield `{"status":200,"data":[${head}`
        for await (const batch of batches) yield `,${batch.items.join(',')}`
        yield ']}'
      })()))
    }
    const page = await agents.page(request.widgetId, request.query)
    let link: string | undefined
    if (page.nextCursor !== null) {
      const params = Object.entries({ ...request.query, limit: page.limit, cursor: page.nextCursor }).map(([k, v]): [string, string] => [k, String(v)])
      const next = new URLSearchParams(params)
      link = `<${path}?${next.toString()}>; rel="next"`
      void reply.header('link', link)
    }
    const body = Buffer.from(`{"status":200,"data":[${page.items.join(',')}],"meta":${JSON.stringify({ nextCursor: page.nextCursor, limit: page.limit })}}`)
    await agents.keepList(request.widgetId, key, { body, link }, ticket, page.tags)
    return await sendJson(reply, body)
  })
}
