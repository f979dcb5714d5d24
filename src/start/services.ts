import { readFileSync } from 'node:fs'
import type { Config } from '../config/index.js'
import { AgentService } from '../agents/service.js'
import { AvatarService } from '../avatars/service.js'
import { openDatabase, pingDatabase, type DbHandle } from '../db/index.js'
import { migrateToLatest } from '../db/migrate.js'
import { createBlobStore, type BlobStore } from '../storage/index.js'
import { TokenService } from '../tokens/service.js'
import type { AddressPolicy } from '../avatars/guard.js'
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
  const agents = new AgentService(database.db, avatars)
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
      await database.close()
      store.close?.()
    }
  }
}
