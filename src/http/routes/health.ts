import { Type } from 'typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { AppError } from '../../errors/index.js'
import { Ok, errorResponses } from '../schemas/envelope.js'

export interface HealthOptions {
  /** Throws when a dependency (database, file store) cannot serve requests. */
  checkReady: () => Promise<void>
}

/** Liveness and readiness for load balancers and orchestrators; no token needed. */
export const healthRoutes: FastifyPluginAsyncTypebox<HealthOptions> = async (app, { checkReady }) => {
  const schema = (summary: string) => ({ summary, tags: ['Operations'], response: { 200: Ok(Type.Object({ ok: Type.Literal(true) })), ...errorResponses(503) } })

  app.get('/healthz', { schema: schema('Liveness: the process answers') }, () => ({ status: 200 as const, data: { ok: true as const } }))

  app.get('/readyz', { schema: schema('Readiness: the database and file store answer') }, async (request) => {
    try {
      await checkReady()
    } catch (err) {
      request.log.warn({ err }, 'not ready')
      throw new AppError('service_unavailable', 'Not ready: the database or the file store does not answer.')
    }
    return { status: 200 as const, data: { ok: true as const } }
  })
}
