import { randomUUID } from 'node:crypto'
import type { IncomingHttpHeaders } from 'node:http'

const REQUEST_ID = /^[\w.:@-]{1,128}$/

/** The caller's X-Request-Id when it is a sane one (echoed and logged), else a new UUID. */
export function requestIdOf (headers: IncomingHttpHeaders): string {
  const given = headers['x-request-id']
  return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID()
}
