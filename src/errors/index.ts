/**
 * The error catalogue: every failure a client can see has a stable snake_case code and an HTTP status.
 * One handler (src/http/error-handler.ts) turns an AppError into the envelope.
 */
export const ErrorCodes = {
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  route_not_found: 404,
  validation_failed: 400,
  malformed_request: 400,
  invalid_json: 400,
  invalid_multipart: 400,
  payload_too_large: 413,
  request_timeout: 408,
  headers_too_large: 431,
  unsupported_media_type: 415,
  service_user_id_taken: 409,
  idempotency_key_in_progress: 409,
  idempotency_key_reused: 422,
  webhook_url_forbidden: 422,
  precondition_failed: 412,
  range_not_satisfiable: 416,
  rate_limited: 429,
  avatar_url_invalid: 422,
  avatar_host_forbidden: 422,
  avatar_unreachable: 422,
  avatar_http_error: 422,
  avatar_too_many_redirects: 422,
  avatar_timeout: 422,
  avatar_too_large: 422,
  avatar_not_an_image: 422,
  avatar_unsupported_format: 422,
  avatar_corrupt: 422,
  avatar_too_many_pixels: 422,
  service_unavailable: 503,
  internal_error: 500
} as const

export type ErrorCode = keyof typeof ErrorCodes

export interface ErrorDetail {
  /** The request field the detail is about, e.g. `status`; absent when it concerns the whole body. */
  field?: string
  message: string
}

export class AppError extends Error {
  override name = 'AppError'
  readonly statusCode: number

  constructor (
    readonly code: ErrorCode,
    message: string,
    readonly details?: ErrorDetail[],
    options?: { cause?: unknown }
  ) {
    super(message, options)
    this.statusCode = ErrorCodes[code]
  }
}

export function isAppError (err: unknown): err is AppError {
  return err instanceof AppError
}

export const errors = {
  unauthorized: (message: string) => new AppError('unauthorized', message),
  readOnlyToken: () => new AppError('forbidden', 'This token is read-only (scope "read"); use a token with scope "write" for changes.'),
  preconditionFailed: () => new AppError('precondition_failed', 'The agent has changed since you read it (If-Match does not match its current ETag); read it again and retry.'),
  agentNotFound: (id: string) => new AppError('not_found', `No agent with id ${JSON.stringify(id)} exists for this widget.`),
  serviceUserIdTaken: (serviceUserId: string) => new AppError(
    'service_user_id_taken',
    `An agent with serviceUserId ${JSON.stringify(serviceUserId)} already exists for this widget.`,
    [{ field: 'serviceUserId', message: 'is already used by another agent' }]
  ),
  validation: (details: ErrorDetail[]) => new AppError(
    'validation_failed',
    `Invalid request: ${details.map((d) => d.field === undefined ? d.message : `${d.field} ${d.message}`).join('; ')}.`,
    details
  ),
  avatar: (code: Extract<ErrorCode, `avatar_${string}`>, message: string, cause?: unknown) =>
    new AppError(code, message, [{ field: 'avatar', message }], { cause })
}
