import type { FastifyInstance } from 'fastify'
import { errors } from '../../errors/index.js'
import type { Metrics } from '../../metrics/index.js'
import { secretsEqual } from '../../tokens/service.js'
import { tokenFromHeader } from './auth.js'

/** Counts and times every answered request, and serves /metrics in the Prometheus text format. */
export function registerMetrics (app: FastifyInstance, metrics: Metrics, metricsToken: string | undefined): void {
  // prom-client hashes a label object on every call; the few (method, route, status) combinations
  // a service answers get their children looked up once instead.
  const children = new Map<string, { count: ReturnType<Metrics['httpRequests']['labels']>, time: ReturnType<Metrics['httpDuration']['labels']> }>()
  app.addHook('onResponse', (request, reply, done) => {
    const route = request.routeOptions.url ?? 'unmatched'
    const key = `${request.method} ${reply.statusCode} ${route}`
    let child = children.get(key)
    if (child === undefined) {
      const labels = { method: request.method, route, status_code: String(reply.statusCode) }
      child = { count: metrics.httpRequests.labels(labels), time: metrics.httpDuration.labels(labels) }
      children.set(key, child)
    }
    child.count.inc()
    child.time.observe(reply.elapsedTime / 1000)
    done()
  })

  app.get('/metrics', { schema: { hide: true } }, async (request, reply) => {
    if (metricsToken !== undefined && !secretsEqual(tokenFromHeader(request.headers.authorization) ?? '', metricsToken)) {
      throw errors.unauthorized('GET /metrics needs `Authorization: Bearer <METRICS_TOKEN>`.')
    }
    return reply.type(metrics.registry.contentType).send(await metrics.registry.metrics())
  })
}
