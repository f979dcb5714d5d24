import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { isStoreUnavailable } from '../db/index.js'
import { AppError, errors, isAppError, type ErrorDetail } from '../errors/index.js'
import { NO_NUL_PATTERN, TEXT_PATTERN } from './schemas/agent.js'

interface AjvError {
  keyword: string
  instancePath: string
  message?: string
  params: Record<string, unknown>
}

/** Turns validation errors from the schema into field details a person can act on. */
export function validationDetails (errs: readonly AjvError[], knownFields: readonly string[] = []): ErrorDetail[] {
  const details = errs.map((e): ErrorDetail => {
    const path = e.instancePath.replace(/^\//, '').replace(/\//g, '.')
    const p = e.params
    switch (e.keyword) {
      case 'required': return { field: String(p.missingProperty), message: 'is required' }
      case 'additionalProperties': return {
        field: String(p.additionalProperty),
        message: `is not a known field${knownFields.length > 0 ? ` (known fields: ${knownFields.join(', ')})` : ''}`
      }
      case 'type': {
        const types = ([] as unknown[]).concat(p.type).map(String)
        if (path === '') return { message: 'the request body must be a JSON object or a URL-encoded form' }
        return { field: path, message: `must be ${types.map((t) => (t === 'null' ? 'null' : `a ${t}`)).join(' or ')}` }
      }
      case 'enum': return { field: path, message: `must be one of: ${(p.allowedValues as unknown[]).map(String).join(', ')}` }
      case 'minLength': return { field: path, message: 'must not be empty' }
      case 'maxLength': return { field: path, message: `must be at most ${String(p.limit)} characters` }
      case 'pattern': return { field: path, message: PATTERN_MESSAGES[String(p.pattern)] ?? `must match ${String(p.pattern)}` }
      default: return { field: path === '' ? undefined : path, message: e.message ?? 'is invalid' }
    }
  })
  // One detail per field: the first problem found is the one to fix.
  return details.filter((d, i) => d.field === undefined || details.findIndex((o) => o.field === d.field) === i)
}

const PATTERN_MESSAGES: Record<string, string> = {
  [TEXT_PATTERN]: 'must contain a non-space character, and no NUL (\\u0000) character',
  [NO_NUL_PATTERN]: 'must not contain a NUL (\\u0000) character'
}

const FASTIFY_CODES: Record<string, (err: FastifyError, contentType: string | undefined) => AppError> = {
  FST_ERR_CTP_INVALID_JSON_BODY: () => new AppError('invalid_json', 'The request body is not valid JSON; check quotes, commas and brackets.'),
  FST_ERR_CTP_EMPTY_JSON_BODY: () => new AppError('invalid_json', 'The request says Content-Type: application/json but its body is empty; send a JSON object.'),
  FST_ERR_CTP_BODY_TOO_LARGE: () => new AppError('payload_too_large', 'The request body is larger than this service accepts; send only the agent fields.'),
  FST_ERR_CTP_INVALID_MEDIA_TYPE: (_err, contentType) => new AppError('unsupported_media_type', `${contentType === undefined ? 'A body without a Content-Type' : `Content-Type ${JSON.stringify(contentType.slice(0, 100))}`} is not supported; send application/json, application/x-www-form-urlencoded or multipart/form-data.`),
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: () => new AppError('validation_failed', 'The Content-Length header does not match the body.'),
  // @fastify/multipart
  FST_REQ_FILE_TOO_LARGE: () => errors.avatar('avatar_too_large', 'The uploaded avatar file is larger than this service accepts (AVATAR_MAX_BYTES); use a smaller image.'),
  FST_FILES_LIMIT: () => new AppError('payload_too_large', 'Send at most one file (the avatar) per request.'),
  FST_PARTS_LIMIT: () => new AppError('payload_too_large', 'The multipart body has more parts than the agent fields.'),
  FST_FIELDS_LIMIT: () => new AppError('payload_too_large', 'The multipart body has more fields than the agent fields.'),
  FST_PROTO_VIOLATION: () => new AppError('invalid_multipart', 'The multipart body uses a field name that is not allowed.')
}

function toAppError (err: FastifyError, knownFields: readonly string[], contentType: string | undefined): AppError {
  const multipart = contentType?.toLowerCase().startsWith('multipart/') === true
  if (isAppError(err)) return err
  if (err.validation !== undefined) {
    const details = validationDetails(err.validation, err.validationContext === 'body' ? knownFields : [])
    return errors.validation(details)
  }
  const mapped = err.code === undefined ? undefined : FASTIFY_CODES[err.code]
  if (mapped !== undefined) return mapped(err, contentType)
  if (err instanceof SyntaxError && err.statusCode === 400) return FASTIFY_CODES.FST_ERR_CTP_INVALID_JSON_BODY!(err, contentType)
  if (err.statusCode === 413) return FASTIFY_CODES.FST_ERR_CTP_BODY_TOO_LARGE!(err, contentType)
  // The multipart parser (busboy) throws plain errors for a body it cannot read.
  if (multipart && err.statusCode === undefined) {
    return new AppError('invalid_multipart', `The multipart/form-data body could not be read (${err.message}); check the boundary and the parts.`)
  }
  if (err.statusCode === 415) return FASTIFY_CODES.FST_ERR_CTP_INVALID_MEDIA_TYPE!(err, contentType)
  // Static files (@fastify/send): a Range past the file's end, or If-Match / If-Unmodified-Since not met.
  if (err.statusCode === 416) return new AppError('range_not_satisfiable', 'The requested range is not within the file (its size is in Content-Range); ask for a range inside it, or for the whole file.')
  if (err.statusCode === 412) return new AppError('precondition_failed', 'The file does not match If-Match or If-Unmodified-Since.')
  if (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500) {
    return new AppError('validation_failed', err.message)
  }
  return serverError(err)
}

/**
 * What a caller is told of any failure that is not theirs to fix, nothing of its internals: 503 when
 * the database (or a connection to the file store) could not do the work now, busy or out of
 * reach, with Retry-After saying when to try again; else 500.
 */
export function serverError (err: unknown): AppError {
  if (isStoreUnavailable(err)) {
    return new AppError('service_unavailable', 'The database or the file store is busy or out of reach right now; retry the request in a moment (a POST with the same Idempotency-Key, if it had one).')
  }
  return new AppError('internal_error', 'Something went wrong on our side; the request was not completed. Try again, and report the X-Request-Id if it keeps happening.')
}

/** Seconds a 503 (or a 409 idempotency_key_in_progress) asks the caller to wait before trying again (the Retry-After header). */
export const RETRY_AFTER_SECONDS = 1

/** One place where every failure becomes the envelope; internals of 5xx never leave the process. */
export function registerErrorHandling (app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError, request: FastifyRequest, reply: FastifyReply) => {
    const known = (request.routeOptions.schema?.body as { properties?: Record<string, unknown> } | undefined)?.properties
    const appErr = toAppError(err, known === undefined ? [] : Object.keys(known), request.headers['content-type'])
    if (appErr.statusCode >= 500) request.log.error({ err }, 'request failed')
    else request.log.info({ code: appErr.code, reason: appErr.message }, 'request refused')
    if (appErr.code === 'unauthorized') void reply.header('www-authenticate', 'Bearer')
    // A 409 for a key in use will pass when its request ends: worth trying again, unlike other 409s.
    if (appErr.statusCode === 503 || appErr.code === 'idempotency_key_in_progress') void reply.header('retry-after', RETRY_AFTER_SECONDS)
    // `bytes */<size>`, as @fastify/send gives it with a 416.
    const contentRange = (err as { headers?: Record<string, unknown> }).headers?.['Content-Range']
    if (appErr.code === 'range_not_satisfiable' && typeof contentRange === 'string') void reply.header('content-range', contentRange)
    return reply.status(appErr.statusCode).send(envelope(appErr))
  })

  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0] ?? ''
    const err = new AppError('route_not_found', `Nothing is at ${request.method} ${path.length > 200 ? `${path.slice(0, 200)}…` : path}; the API lives under /api/external/v1 (see /docs).`)
    return reply.status(404).send(envelope(err))
  })
}

export function envelope (err: AppError) {
  return {
    status: err.statusCode,
    error: {
      code: err.code,
      message: err.message,
      ...(err.details === undefined ? {} : { details: err.details })
    }
  }
}
