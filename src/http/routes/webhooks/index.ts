import type { FastifyPluginAsync } from 'fastify'
import type { WebhookService } from '../../../webhooks/service.js'
import { createWebhookRoute } from './create.js'
import { deleteWebhookRoute } from './delete.js'
import { deliveriesRoute } from './deliveries.js'
import { listWebhooksRoute } from './list.js'
import { resendRoute } from './resend.js'

export interface WebhookRoutesOptions {
  webhooks: WebhookService
}

export const webhookRoutes: FastifyPluginAsync<WebhookRoutesOptions> = async (app, { webhooks }) => {
  for (const route of [createWebhookRoute, listWebhooksRoute, deleteWebhookRoute, deliveriesRoute, resendRoute]) {
    await app.register(route, { webhooks })
  }
}
