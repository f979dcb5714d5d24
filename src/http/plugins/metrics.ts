import type { FastifyInstance } from 'fastify'
import { errors } from '../../errors/index.js'
import type { Metrics } from '../../metrics/index.js'
import { secretsEqual } from '../../tokens/service.js'
import { tokenFromHeader } from './auth.js'

/** Counts and times every answered request, and serves /metrics in the Prometheus text format. */
export function registerMetrics (app: FastifyInstance, metrics: Metrics, metricsToken: string | undefined): void {
  app.addHook('onResponse', (request, reply, done) => {
    metrics.requests.observe(request.method, request.routeOptions.url ?? 'unmatched', reply.statusCode, reply.elapsedTime / 1000)
    done()
  })

  app.get('/metrics', { schema: { hide: true } }, async (request, reply) => {
    if (metricsToken !== undefined && !secretsEqual(tokenFromHeader(request.headers.authorization) ?? '', metricsToken)) {
      throw errors.unauthorized('GET /metrics needs `Authorization: Bearer <METRICS_TOKEN>`.')
    }
    return reply.type(metrics.registry.contentType).send(await metrics.registry.metrics())
  })
}
