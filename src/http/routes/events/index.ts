import type { FastifyPluginAsync } from 'fastify'
import { eventStreamRoute, type EventRoutesOptions } from './stream.js'

export const eventRoutes: FastifyPluginAsync<EventRoutesOptions> = async (app, options) => {
  await app.register(eventStreamRoute, options)
}
