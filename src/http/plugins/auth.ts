import type { FastifyInstance, FastifyRequest } from 'fastify'
import { errors } from '../../errors/index.js'
import type { TokenIdentity, TokenService } from '../../tokens/service.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** The widget the request's token belongs to; set by requireToken. */
    widgetId: string
    /** Who is calling: widget, scope and token hash; set by requireToken. */
    caller: TokenIdentity
  }
}

/** The token in an Authorization header: bare, or as `Bearer <token>`. */
export function tokenFromHeader (header: string | undefined): string | undefined {
  if (header === undefined) return undefined
  const value = header.trim()
  const bearer = /^Bearer\s+(.+)$/i.exec(value)
  const token = (bearer?.[1] ?? value).trim()
  return token === '' ? undefined : token
}

const READ_METHODS = new Set(['GET', 'HEAD', 'OPTIONS'])

/**
 * Adds a hook to this scope that refuses requests without a valid token, before the body is read,
 * and writes with a read-only token.
 */
export function requireToken (app: FastifyInstance, tokens: TokenService): void {
  app.decorateRequest('widgetId', '')
  app.decorateRequest('caller', null as unknown as TokenIdentity)
  app.addHook('onRequest', async (request: FastifyRequest) => {
    const token = tokenFromHeader(request.headers.authorization)
    if (token === undefined) {
      throw errors.unauthorized('An Authorization header is required: send `Authorization: Bearer <token>` (or the bare token).')
    }
    const caller = await tokens.authenticate(token)
    if (caller === undefined) {
      throw errors.unauthorized('The token in the Authorization header is unknown or revoked; create one with `agentry tokens create --widget NAME`.')
    }
    if (caller.scope === 'read' && !READ_METHODS.has(request.method)) throw errors.readOnlyToken()
    request.widgetId = caller.widgetId
    request.caller = caller
  })
}
