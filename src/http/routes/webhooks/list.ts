import { Type } from 'typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { WebhookRoutesOptions } from './index.js'
import { EndpointSchema } from './schemas.js'
import { Ok, errorResponses } from '../../schemas/envelope.js'

export const listWebhooksRoute: FastifyPluginAsyncTypebox<WebhookRoutesOptions> = async (app, { webhooks }) => {
  app.get('/webhooks', {
    schema: {
      summary: 'List webhook endpoints',
      tags: ['Webhooks'],
      response: { 200: Ok(Type.Array(EndpointSchema)), ...errorResponses(401, 429) }
    }
  }, async (request) => ({ status: 200 as const, data: await webhooks.list(request.widgetId) }))
}
