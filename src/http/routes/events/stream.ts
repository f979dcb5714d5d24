import { Type } from 'typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { EventStreams } from '../../../events/stream.js'
import { AppError, errors } from '../../../errors/index.js'
import type { TokenService } from '../../../tokens/service.js'
import { tokenHashOf } from '../../plugins/auth.js'
import { errorResponses } from '../../schemas/envelope.js'

export interface EventRoutesOptions {
  streams: EventStreams
  tokens: TokenService
}

export const eventStreamRoute: FastifyPluginAsyncTypebox<EventRoutesOptions> = async (app, { streams, tokens }) => {
  app.get('/events', {
    schema: {
      summary: 'Live stream of agent events (Server-Sent Events)',
      description: 'A text/event-stream of the widget\'s events: agent.created, agent.updated, agent.status_changed, ' +
        'agent.deleted. Each message has `id:` (the event id), `event:` (its type) and `data:` (the event as JSON: ' +
        '{id, type, createdAt, data: {agent, changes}}). Reconnect with the Last-Event-ID header (or ?lastEventId=) ' +
        'to get what you missed within EVENTS_RETENTION_SECONDS, then the live flow; without it the stream starts now. ' +
        'Comment lines keep idle connections open.',
      tags: ['Events'],
      querystring: Type.Object({ lastEventId: Type.Optional(Type.String({ pattern: '^\\d{1,15}$' })) }),
      produces: ['text/event-stream'],
      response: { 200: { description: 'text/event-stream', type: 'string' }, ...errorResponses(400, 401, 429) }
    }
  }, async (request, reply) => {
    const header = request.headers['last-event-id']
    const given = (Array.isArray(header) ? header[0] : header) ?? request.query.lastEventId
    if (given !== undefined && !/^\d{1,15}$/.test(given)) {
      throw errors.validation([{ field: 'Last-Event-ID', message: 'must be the id of an event this stream sent' }])
    }
    const release = streams.reserve(request.widgetId)
    if (release === undefined) {
      throw new AppError('rate_limited', 'This widget has as many event streams open on this server as it may (EVENTS_MAX_STREAMS); close one, or use one stream for all your listeners.')
    }
    let from: number
    try {
      // Read before the reply is taken over: a database that cannot answer gets the error envelope.
      from = await streams.startingPoint(request.widgetId, given === undefined ? undefined : Number(given))
    } catch (err) {
      release()
      throw err
    }
    reply.hijack()
    // With the headers the reply has by now (X-Request-Id, the rate limit's).
    const hash = tokenHashOf(request)
    await streams.stream(request.widgetId, from, reply.raw, reply.getHeaders(), async () =>
      // Cached for a second (TokenService), whatever the number of streams on the token.
      hash !== undefined && (await tokens.authenticateHash(hash))?.widgetId === request.widgetId, release)
  })
}
