import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { AgentRoutesOptions } from './index.js'
import { Availability } from '../../schemas/agent.js'
import { Ok, errorResponses } from '../../schemas/envelope.js'
import { sendJson } from './etag.js'

const KEY = 'availability'

export const availabilityRoute: FastifyPluginAsyncTypebox<AgentRoutesOptions> = async (app, { agents }) => {
  app.get('/agents/availability', {
    schema: {
      summary: 'Is anyone online?',
      description: 'How many agents are online and active right now, and whether anyone is: the widget\'s question in one call.',
      tags: ['Presence'],
      response: { 200: Ok(Availability), ...errorResponses(401, 429) }
    }
  }, async (request, reply) => {
    // Answered from memory while nothing was written (SQLite; see AgentReadCache), like lists.
    const cached = agents.cachedList(request.widgetId, KEY)
    const ticket = cached === undefined ? agents.listTicket(request.widgetId) : undefined
    const body = cached?.body ?? Buffer.from(JSON.stringify({ status: 200, data: await agents.availability(request.widgetId) }))
    if (cached === undefined) await agents.keepList(request.widgetId, KEY, { body, link: undefined }, ticket)
    return await sendJson(reply, body)
  })
}
