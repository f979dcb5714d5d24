import { Type } from 'typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { WebhookRoutesOptions } from './index.js'
import { DeliverySchema, WebhookParams } from './schemas.js'
import { Ok, errorResponses } from '../../schemas/envelope.js'

export const deliveriesRoute: FastifyPluginAsyncTypebox<WebhookRoutesOptions> = async (app, { webhooks }) => {
  app.get('/webhooks/:id/deliveries', {
    schema: {
      summary: 'Delivery log of a webhook endpoint',
      description: 'Deliveries, newest events first, each with every attempt: when, the HTTP status or the error, how long, and the start of the response.',
      tags: ['Webhooks'],
      params: WebhookParams,
      querystring: Type.Object({ limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 200 })) }),
      response: { 200: Ok(Type.Array(DeliverySchema)), ...errorResponses(401, 404, 429) }
    }
  }, async (request) => ({ status: 200 as const, data: await webhooks.deliveries(request.widgetId, request.params.id, request.query.limit) }))
}
