import type { FastifyInstance, FastifyRequest } from 'fastify'
import { errors } from '../../errors/index.js'
import { hashToken, type TokenIdentity, type TokenService } from '../../tokens/service.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** The widget the request's token belongs to; set by requireToken. */
    widgetId: string
    /** Who is calling: widget, scope and token hash; set by requireToken. */
    caller: TokenIdentity
    /** sha256 of the Authorization token (null: none given); see tokenHashOf. */
    tokenHash: string | null | undefined
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

/** The hash of the request's token, computed once for the rate limiter and the token check both. */
export function tokenHashOf (request: FastifyRequest): string | undefined {
  if (request.tokenHash === undefined) {
    const token = tokenFromHeader(request.headers.authorization)
    request.tokenHash = token === undefined ? null : hashToken(token)
  }
  return request.tokenHash ?? undefined
}

/** Must run on the scope before tokenHashOf is used in it. */
export function decorateTokenHash (app: FastifyInstance): void {
  app.decorateRequest('tokenHash', undefined)
}

const READ_METHODS = new Set(['GET', 'HEAD', 'OPTIONS'])

/**
 * Adds a hook to this scope that refuses requests without a valid token, before the body is read,
 * and writes with a read-only token.
 */
export function requireToken (app: FastifyInstance, tokens: TokenService): void {
  app.decorateRequest('widgetId', '')
  app.decorateRequest('caller', null as unknown as TokenIdentity)
  // A callback hook with a synchronous path for tokens the cache knows: it runs on every API request.
  app.addHook('onRequest', (request: FastifyRequest, _reply, done) => {
    const hash = tokenHashOf(request)
    if (hash === undefined) {
      done(errors.unauthorized('An Authorization header is required: send `Authorization: Bearer <token>` (or the bare token).'))
      return
    }
    const cached = tokens.cachedIdentity(hash)
    if (cached !== undefined) {
      done(admit(request, cached ?? undefined))
      return
    }
    tokens.authenticateHash(hash).then((caller) => { done(admit(request, caller)) }, done)
  })
}

/** Sets who is calling on the request; the error to answer with when the call is refused. */
function admit (request: FastifyRequest, caller: TokenIdentity | undefined): Error | undefined {
  if (caller === undefined) {
    return errors.unauthorized('The token in the Authorization header is unknown or revoked; create one with `agentry tokens create --widget NAME`.')
  }
  if (caller.scope === 'read' && !READ_METHODS.has(request.method)) return errors.readOnlyToken()
  request.widgetId = caller.widgetId
  request.caller = caller
  return undefined
}
