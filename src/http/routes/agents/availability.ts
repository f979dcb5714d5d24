import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { AgentRoutesOptions } from './index.js'
import { Availability } from '../../schemas/agent.js'
import { Ok, errorResponses } from '../../schemas/envelope.js'

export const availabilityRoute: FastifyPluginAsyncTypebox<AgentRoutesOptions> = async (app, { agents }) => {
  app.get('/agents/availability', {
    schema: {
      summary: 'Is anyone online?',
      description: 'How many agents are online and active right now, and whether anyone is: the widget\'s question in one call.',
      tags: ['Presence'],
      response: { 200: Ok(Availability), ...errorResponses(401, 429) }
    }
  }, async (request) => ({ status: 200 as const, data: await agents.availability(request.widgetId) }))
}
