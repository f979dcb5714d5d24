import closeWithGrace from 'close-with-grace'
import type { FastifyInstance } from 'fastify'
import type { Config } from '../config/index.js'
import { buildApp } from '../http/app.js'
import { createServices, type Services } from './services.js'

export interface RunningServer {
  app: FastifyInstance
  services: Services
  url: string
  close: () => Promise<void>
}

/** Wires everything from config and listens; closing finishes in-flight requests, then the database. */
export async function startServer (config: Config): Promise<RunningServer> {
  const services = await createServices(config)
  let app: FastifyInstance
  try {
    // A BOOTSTRAP_TOKEN works from the first request the server answers: ensured before listening.
    if (config.bootstrapToken !== undefined) await services.tokens.bootstrap(config.bootstrapToken)
    app = await buildApp(services)
  } catch (err) {
    await services.close()
    throw err
  }
  try {
    await app.listen({ host: config.host, port: config.port })
  } catch (err) {
    await app.close()
    await services.close()
    throw err
  }
  // Without BOOTSTRAP_TOKEN, after listen: a first token generated here is never lost to a start
  // that fails (port taken); nobody can be using it before it is printed.
  const created = config.bootstrapToken === undefined ? await services.tokens.bootstrap(undefined) : undefined
  const address = app.server.address()
  const port = typeof address === 'object' && address !== null ? address.port : config.port
  const url = `http://${config.host.includes(':') ? `[${config.host}]` : config.host}:${port}`
  if (created !== undefined) {
    // Printed once, as plain text beside the log lines, not as one of them (no log field carries it).
    // Under a supervisor that keeps stdout (journald, docker logs) it is kept with the logs: the README
    // says to give BOOTSTRAP_TOKEN there instead.
    process.stdout.write(
      `\nNo API token existed, so one was created for widget "${created.widgetName}". It is shown only this once:\n\n` +
      `  ${created.token}\n\n` +
      `Try it:\n  curl -H 'Authorization: Bearer ${created.token}' ${url}/api/external/v1/agents\n\n`
    )
  }
  let closing: Promise<void> | undefined
  const close = async () => {
    closing ??= finishRequests(app, services, config.shutdownTimeoutMs).finally(() => services.close())
    await closing
  }
  return { app, services, url, close }
}

/** How long before SHUTDOWN_TIMEOUT_MS runs out the claims of requests still running are released. */
const RELEASE_BEFORE_EXIT_MS = 500

/**
 * Closes the server, which waits for the requests in flight. If they are still running just before
 * the shutdown timeout, when the process will exit under them, their Idempotency-Key claims are
 * released: their creates end with the process, and their clients' retries can run at once on
 * another instance instead of hearing 409 until the claims are stale.
 */
async function finishRequests (app: FastifyInstance, services: Services, shutdownTimeoutMs: number): Promise<void> {
  const closed = app.close()
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<true>((resolve) => { timer = setTimeout(() => { resolve(true) }, Math.max(shutdownTimeoutMs - RELEASE_BEFORE_EXIT_MS, shutdownTimeoutMs / 2)) })
  try {
    if (await Promise.race([closed.then(() => false), late])) {
      await services.idempotencyKeys.releaseRunning().catch((err: unknown) => { app.log.warn({ err }, 'could not release the Idempotency-Keys of requests cut off') })
    }
    await closed
  } finally {
    clearTimeout(timer)
  }
}

/** The `serve` command: start, then shut down gracefully on SIGTERM/SIGINT. */
export async function serve (config: Config): Promise<void> {
  const server = await startServer(config)
  closeWithGrace({ delay: config.shutdownTimeoutMs }, async ({ signal, err }) => {
    if (err !== undefined) server.app.log.error({ err }, 'shutting down after an error')
    else server.app.log.info({ signal }, 'shutting down: finishing in-flight requests')
    await server.close()
    server.app.log.info('stopped')
  })
}
