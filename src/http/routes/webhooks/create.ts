import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { WebhookRoutesOptions } from './index.js'
import { CreateWebhookBody, CreatedEndpointSchema } from './schemas.js'
import { Ok, errorResponses } from '../../schemas/envelope.js'

export const createWebhookRoute: FastifyPluginAsyncTypebox<WebhookRoutesOptions> = async (app, { webhooks }) => {
  app.post('/webhooks', {
    schema: {
      summary: 'Register a webhook endpoint',
      description: 'Events of the chosen types are POSTed to the URL, signed (Standard Webhooks: webhook-id, ' +
        'webhook-timestamp, webhook-signature), in order, retried with exponential backoff for ' +
        'WEBHOOK_RETRY_WINDOW_SECONDS until the endpoint answers 2xx. The secret is shown only in this answer.',
      tags: ['Webhooks'],
      body: CreateWebhookBody,
      response: { 200: Ok(CreatedEndpointSchema), ...errorResponses(400, 401, 403, 422, 429) }
    }
  }, async (request) => ({ status: 200 as const, data: await webhooks.create(request.widgetId, request.body) }))
}
