import { Type } from 'typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { AgentRoutesOptions } from './index.js'
import { AgentSchema } from '../../schemas/agent.js'
import { Ok, errorResponses } from '../../schemas/envelope.js'

export const listAgentsRoute: FastifyPluginAsyncTypebox<AgentRoutesOptions> = async (app, { agents }) => {
  app.get('/agents', {
    schema: {
      summary: 'Get all agents',
      description: "The widget's agents, newest first (agents created in the same second: the later one first).",
      tags: ['Agent'],
      response: { 200: Ok(Type.Array(AgentSchema)), ...errorResponses(401) }
    }
  }, async (request) => ({ status: 200 as const, data: await agents.list(request.widgetId) }))
}
