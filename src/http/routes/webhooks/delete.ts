import { Type } from 'typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { WebhookRoutesOptions } from './index.js'
import { WebhookParams } from './schemas.js'
import { Ok, errorResponses } from '../../schemas/envelope.js'

export const deleteWebhookRoute: FastifyPluginAsyncTypebox<WebhookRoutesOptions> = async (app, { webhooks }) => {
  app.delete('/webhooks/:id', {
    schema: {
      summary: 'Delete a webhook endpoint',
      description: 'Stops deliveries to it; its pending deliveries and their log go with it.',
      tags: ['Webhooks'],
      params: WebhookParams,
      response: { 200: Ok(Type.Object({ id: Type.String(), deleted: Type.Literal(true) })), ...errorResponses(401, 403, 404, 429) }
    }
  }, async (request) => {
    await webhooks.delete(request.widgetId, request.params.id)
    return { status: 200 as const, data: { id: request.params.id, deleted: true as const } }
  })
}
