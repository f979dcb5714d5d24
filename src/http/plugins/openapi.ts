import type { FastifyInstance, FastifySchema } from 'fastify'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'

const API = '/api/external/v1'

const header = (description: string) => ({ type: 'string', description })
const IF_MATCH = header('Make the change only if the agent\'s current ETag is this one (strong comparison; `*`: any agent that exists); otherwise 412 precondition_failed and nothing changes.')
const IF_NONE_MATCH = header('The ETag you hold: 304 with no body when the agent is unchanged.')
const ETAG = { ETag: header('The agent\'s representation\'s strong tag, for If-None-Match and If-Match.') }

/**
 * The headers the API reads and sends beyond the JSON bodies, by route, for the documentation alone
 * (as route schemas, Fastify would validate them on every request, for nothing: the routes read them).
 */
const REQUEST_HEADERS: Record<string, Record<string, unknown>> = {
  [`POST ${API}/agents`]: {
    'idempotency-key': header('1-255 visible ASCII characters (a UUID): a retry with the same key and body gets the first answer (Idempotent-Replayed: true) and creates nothing; with another body, 422 idempotency_key_reused; while the first still runs, 409 idempotency_key_in_progress with Retry-After.')
  },
  [`PUT ${API}/agents/:id`]: { 'if-match': IF_MATCH },
  [`DELETE ${API}/agents/:id`]: { 'if-match': IF_MATCH },
  [`PUT ${API}/agents/by-service-user-id/:serviceUserId`]: { 'if-match': IF_MATCH },
  [`GET ${API}/agents/:id`]: { 'if-none-match': IF_NONE_MATCH },
  [`GET ${API}/agents/by-service-user-id/:serviceUserId`]: { 'if-none-match': IF_NONE_MATCH },
  [`GET ${API}/events`]: { 'last-event-id': header('The id of the last event received: the stream resumes after it (also ?lastEventId=).') }
}
const RESPONSE_HEADERS: Record<string, Record<string, unknown>> = {
  [`POST ${API}/agents`]: { ...ETAG, 'Idempotent-Replayed': header('`true` when this is the answer kept for the Idempotency-Key, not a new agent.') },
  [`PUT ${API}/agents/:id`]: ETAG,
  [`PUT ${API}/agents/by-service-user-id/:serviceUserId`]: ETAG,
  [`GET ${API}/agents/:id`]: ETAG,
  [`GET ${API}/agents/by-service-user-id/:serviceUserId`]: ETAG
}

/** A route's schema as documented: with the headers above. */
function documented ({ schema, url, route }: { schema: FastifySchema, url: string, route: { method: string | string[] } }): { schema: FastifySchema, url: string } {
  const method = Array.isArray(route.method) ? route.method[0] : route.method
  const key = `${method} ${url}`
  const requestHeaders = REQUEST_HEADERS[key]
  const responseHeaders = RESPONSE_HEADERS[key]
  if (requestHeaders === undefined && responseHeaders === undefined) return { schema, url }
  const response = schema.response as Record<string, Record<string, unknown>> | undefined
  return {
    url,
    schema: {
      ...schema,
      ...(requestHeaders === undefined ? {} : { headers: { type: 'object', properties: requestHeaders } }),
      ...(responseHeaders === undefined || response?.[200] === undefined
        ? {}
        : { response: { ...response, 200: { ...response[200], headers: responseHeaders } } })
    }
  }
}

/** /openapi.json, generated from the route schemas, and a readable docs page at /docs. */
export async function registerOpenApi (app: FastifyInstance, version: string): Promise<void> {
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Agentry',
        version,
        description: 'The roster of support agents behind a chat widget. Wire-compatible with the Widget API v1 "Agent" resource: every response is an envelope, `{"status": 200, "data": ...}` or `{"status": <code>, "error": {"code", "message", "details"?}}`.'
      },
      components: {
        securitySchemes: {
          token: { type: 'apiKey', in: 'header', name: 'Authorization', description: 'The widget token, bare or as `Bearer <token>`.' }
        }
      }
    },
    transform: documented,
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => typeof json.$id === 'string' ? json.$id : `def-${i}` }
  })
  app.get('/openapi.json', { schema: { hide: true } }, () => app.swagger())
  await app.register(swaggerUi, { routePrefix: '/docs', uiConfig: { docExpansion: 'list', deepLinking: true } })
}
