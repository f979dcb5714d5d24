import type { FastifyInstance } from 'fastify'
import formbody from '@fastify/formbody'
import { parse } from 'node:querystring'

const BOOLEAN_FIELDS = new Set(['active'])
const FORM_BOOLEANS: Record<string, boolean> = { true: true, false: false, 1: true, 0: false }

/**
 * PHP-style clients post forms: same fields as JSON, booleans as true|false|1|0. Values that are not
 * booleans stay strings, so the schema reports them as it would in JSON.
 */
export function parseForm (body: string): Record<string, unknown> {
  return coerceFormBooleans({ ...parse(body) })
}

/** Turns true|false|1|0 into booleans for the boolean fields of a form (URL-encoded or multipart). */
export function coerceFormBooleans (fields: Record<string, unknown>): Record<string, unknown> {
  for (const [key, value] of Object.entries(fields)) {
    if (BOOLEAN_FIELDS.has(key) && typeof value === 'string' && value in FORM_BOOLEANS) fields[key] = FORM_BOOLEANS[value]
  }
  return fields
}

/** JSON (Fastify's own parser) and forms; plain text is refused with 415 rather than read as a string. */
export async function registerBodyParsers (app: FastifyInstance): Promise<void> {
  app.removeContentTypeParser('text/plain')
  await app.register(formbody, { parser: parseForm })
}
