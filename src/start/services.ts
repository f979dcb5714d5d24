import { readFileSync } from 'node:fs'
import type { Config } from '../config/index.js'
import { AgentService } from '../agents/service.js'
import { AvatarService } from '../avatars/service.js'
import { openDatabase, pingDatabase, type DbHandle } from '../db/index.js'
import { migrateToLatest } from '../db/migrate.js'
import { purgeIdempotencyKeys } from '../db/repositories/idempotency.js'
import { createBlobStore, type BlobStore } from '../storage/index.js'
import { TokenService } from '../tokens/service.js'
import type { AddressPolicy } from '../net/guard.js'
import { createMetrics, type Metrics } from '../metrics/index.js'

export interface Services {
  config: Config
  database: DbHandle
  store: BlobStore
  tokens: TokenService
  avatars: AvatarService
  agents: AgentService
  metrics: Metrics
  checkReady: () => Promise<void>
  version: string
  close: () => Promise<void>
}

/**
 * Periodic upkeep on every instance (all of it idempotent): heartbeats that lapsed go offline,
 * unreferenced avatar files are deleted, old idempotency keys are forgotten.
 */
function startMaintenance (config: Config, database: DbHandle, agents: AgentService): () => Promise<void> {
  let running: Promise<void> | undefined
  const tick = () => {
    running ??= (async () => {
      await agents.maintain()
      await purgeIdempotencyKeys(database.db, Math.floor(Date.now() / 1000) - config.idempotencyTtlSeconds)
    })().catch((err: unknown) => {
      // Logged by nobody else; the next tick tries again.
      process.emitWarning(`agentry maintenance failed: ${err instanceof Error ? err.message : String(err)}`)
    }).finally(() => { running = undefined })
  }
  const timer = setInterval(tick, config.maintenanceIntervalMs)
  timer.unref()
  return async () => {
    clearInterval(timer)
    await running
  }
}

export const VERSION: string = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version

/** Opens the stores named by config, brings the schema up to date and wires the domain services. */
export async function createServices (config: Config, overrides: { isAllowedAddress?: AddressPolicy } = {}): Promise<Services> {
  const database = openDatabase(config.database)
  try {
    await migrateToLatest(database.db, database.dialect)
  } catch (err) {
    await database.close()
    throw err
  }
  const store = createBlobStore(config)
  const metrics = createMetrics(database.poolStats)
  const tokens = new TokenService(database.db)
  const avatars = new AvatarService({
    store,
    staticBaseUrl: config.staticBaseUrl,
    limits: config.avatar,
    isAllowedAddress: overrides.isAllowedAddress,
    observer: metrics.avatars
  })
  const agents = new AgentService(database.db, avatars, {
    presenceTtlSeconds: config.presenceTtlSeconds,
    blobGcGraceSeconds: config.avatarGcGraceSeconds
  })
  const stopMaintenance = startMaintenance(config, database, agents)
  return {
    config,
    database,
    store,
    tokens,
    avatars,
    agents,
    metrics,
    version: VERSION,
    checkReady: async () => { await Promise.all([pingDatabase(database.db), store.checkReady()]) },
    close: async () => {
      await stopMaintenance()
      await database.close()
      store.close?.()
    }
  }
}
