import { Type } from 'typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { WebhookRoutesOptions } from './index.js'
import { DeliveryParams } from './schemas.js'
import { Ok, errorResponses } from '../../schemas/envelope.js'

export const resendRoute: FastifyPluginAsyncTypebox<WebhookRoutesOptions> = async (app, { webhooks }) => {
  app.post('/webhooks/:id/deliveries/:deliveryId/resend', {
    schema: {
      summary: 'Send a delivery again',
      description: 'Puts the delivery back in its endpoint\'s queue, to be sent as soon as possible with the same webhook-id.',
      tags: ['Webhooks'],
      params: DeliveryParams,
      response: { 200: Ok(Type.Object({ id: Type.String(), status: Type.Literal('pending') })), ...errorResponses(401, 403, 404, 429) }
    }
  }, async (request) => {
    await webhooks.resend(request.widgetId, request.params.id, request.params.deliveryId)
    return { status: 200 as const, data: { id: request.params.deliveryId, status: 'pending' as const } }
  })
}
