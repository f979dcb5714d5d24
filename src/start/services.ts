import { readFileSync } from 'node:fs'
import type { Config } from '../config/index.js'
import { AgentService } from '../agents/service.js'
import { AgentReadCache } from '../agents/read-cache.js'
import { CheckedLists } from '../agents/checked-lists.js'
import { AvatarService } from '../avatars/service.js'
import { configureImageLibrary } from '../avatars/process.js'
import { openDatabase, pingDatabase, whileBusy, type DbHandle } from '../db/index.js'
import { migrateToLatest } from '../db/migrate.js'
import { purgeIdempotencyKeys } from '../db/repositories/idempotency.js'
import { IdempotencyKeys, idempotencyClaimSeconds } from '../http/plugins/idempotency.js'
import { purgeEvents } from '../db/repositories/events.js'
import { purgeDeliveries } from '../db/repositories/webhooks.js'
import { purgeBlobClaims } from '../db/repositories/blob-gc.js'
import { handOverLeftovers } from '../avatars/inventory.js'
import { EventStreams } from '../events/stream.js'
import { WebhookService } from '../webhooks/service.js'
import { createBlobStore, type BlobStore } from '../storage/index.js'
import { TokenService } from '../tokens/service.js'
import { addressPolicy, type AddressPolicy } from '../net/guard.js'
import { OutboundResolver } from '../net/resolve.js'
import { ProcessingBudget } from '../avatars/budget.js'
import { createMetrics, type Metrics } from '../metrics/index.js'
import { RateLimiter, isAddressKey, type SharedCounts } from '../ratelimit/limiter.js'
import { openSqliteRateWindows, type SqliteRateWindows } from '../db/rate-windows-sqlite.js'
import { addToRateWindows, purgeRateWindows } from '../db/repositories/rate-limits.js'

export interface Services {
  config: Config
  database: DbHandle
  store: BlobStore
  tokens: TokenService
  avatars: AvatarService
  agents: AgentService
  webhooks: WebhookService
  streams: EventStreams
  /** Idempotency-Key claims of this instance's requests (see IdempotencyKeys). */
  idempotencyKeys: IdempotencyKeys
  metrics: Metrics
  /** Undefined when rate limits are off (RATE_LIMIT_MAX=0). */
  rateLimiter: RateLimiter | undefined
  checkReady: () => Promise<void>
  version: string
  close: () => Promise<void>
}

/** How long the file collector's claims are remembered: far longer than any write takes. */
const BLOB_CLAIMS_KEPT_SECONDS = 3600

/** Temporary files of avatar writes that never finished are deleted once they are this old... */
const LEFTOVER_AGE_MS = 3600_000
/** ...by a look through the avatar folder at start and this often after. */
const LEFTOVER_SWEEP_MS = 6 * 3600_000
/**
 * The first look for images that unfinished writes left whole (AVATAR_LEFTOVERS_SWEEP_SECONDS) comes
 * this long after start at most: soon after a crash and restart, but not in the way of a start.
 */
const FIRST_LEFTOVERS_LOOK_MS = 600_000
/** The longest delay Node's timers take. */
const MAX_TIMER_MS = 2 ** 31 - 1

/**
 * Periodic upkeep on every instance (all of it idempotent): heartbeats that lapsed go offline,
 * unreferenced avatar files are deleted, old idempotency keys, events and collector claims are
 * forgotten; less often, what unfinished writes left in the store is deleted (temporary files) or
 * handed to the file collector (whole images nothing refers to).
 */
function startMaintenance (config: Config, database: DbHandle, store: BlobStore, agents: AgentService, webhooks: WebhookService, metrics: Metrics): () => Promise<void> {
  // Unanswered Idempotency-Key claims are kept until stale, however short the answers are kept.
  const claimsKeptSeconds = Math.max(config.idempotencyTtlSeconds, idempotencyClaimSeconds(config.avatar.timeoutMs))
  const upkeep = every(config.maintenanceIntervalMs, async () => {
    const now = Math.floor(Date.now() / 1000)
    // Each step on its own: one that fails (a store refusing a deletion, for as long as it is down)
    // must not hold back the others, the purges above all.
    await eachOnItsOwn([
      async () => { await agents.maintain() },
      async () => { await purgeIdempotencyKeys(database.db, now - config.idempotencyTtlSeconds, now - claimsKeptSeconds) },
      async () => { await purgeDeliveries(database.db, (now - config.events.retentionSeconds) * 1000) },
      async () => { await purgeEvents(database.db, now - config.events.retentionSeconds) },
      async () => { await purgeBlobClaims(database.db, now - BLOB_CLAIMS_KEPT_SECONDS) },
      async () => { if (database.dialect === 'postgres') await purgeRateWindows(database.db, Date.now() - config.rateLimit.windowMs) }
    ])
  })
  // Webhook deliveries are polled often: a due delivery goes out within one poll on some instance.
  // Shutdown stops it between two rounds (what is left goes from another instance, or after a restart).
  const dispatch = every(config.events.pollMs, async (signal) => {
    while (!signal.aborted && await webhooks.dispatchDue() > 0) { /* drain what is due */ }
  })
  const sweep = store.sweepLeftovers?.bind(store)
  const tempFiles = sweep === undefined ? async () => {} : every(LEFTOVER_SWEEP_MS, async () => { await sweep(LEFTOVER_AGE_MS) }, { atStart: true })
  const sweepMs = config.avatarLeftoversSweepSeconds * 1000
  const leftoverImages = sweepMs === 0
    ? async () => {}
    : every(sweepMs, async (signal) => {
      const handed = await handOverLeftovers(database.db, database.transact, store, { graceSeconds: config.avatarGcGraceSeconds, signal })
      if (!signal.aborted) metrics.leftoversHandedOver(handed)
    }, { firstAfterMs: Math.min(sweepMs, FIRST_LEFTOVERS_LOOK_MS) })
  // No more attempts are started; those on their way are waited for.
  const stopDispatch = async (): Promise<void> => { await dispatch(); await webhooks.settle() }
  return async () => { await Promise.all([upkeep(), stopDispatch(), tempFiles(), leftoverImages()]) }
}

/** Runs the steps one after another, each whatever became of those before; then throws the first failure, if any. */
async function eachOnItsOwn (steps: ReadonlyArray<() => Promise<void>>): Promise<void> {
  let failure: { err: unknown } | undefined
  for (const step of steps) {
    try {
      await step()
    } catch (err) {
      failure ??= { err }
    }
  }
  if (failure !== undefined) throw failure.err
}

/**
 * Runs task every ms (and once at once with atStart, or once firstAfterMs after start), never two at
 * once; returns a stop function that aborts the task's signal and waits for a running one.
 */
function every (ms: number, task: (signal: AbortSignal) => Promise<void>, options: { atStart?: boolean, firstAfterMs?: number } = {}): () => Promise<void> {
  const { atStart = false, firstAfterMs } = options
  let running: Promise<void> | undefined
  const stopping = new AbortController()
  const run = (): void => {
    if (stopping.signal.aborted) return
    running ??= task(stopping.signal).catch((err: unknown) => {
      // Nobody else would hear of it; the next tick tries again.
      process.emitWarning(`agentry background task failed: ${err instanceof Error ? err.message : String(err)}`)
    }).finally(() => { running = undefined })
  }
  // Node's timers take at most 2^31-1 ms (~24.8 days) and run a longer one after 1 ms, over and
  // over: a longer period is counted out by a check every hour.
  let due = Date.now() + ms
  const timer = ms <= MAX_TIMER_MS
    ? setInterval(run, ms)
    : setInterval(() => {
      if (Date.now() < due) return
      due = Date.now() + ms
      run()
    }, 3_600_000)
  timer.unref()
  const first = firstAfterMs === undefined || firstAfterMs >= ms ? undefined : setTimeout(run, firstAfterMs)
  first?.unref()
  if (atStart) run()
  return async () => {
    stopping.abort()
    clearInterval(timer)
    clearTimeout(first)
    await running
  }
}

export const VERSION: string = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version

/**
 * What tests may set that the configuration does not: the address guard, memory bounds and batch
 * sizes too large to reach in a test, and a pause inside the file collector (to race a write against it).
 */
export interface ServiceOverrides {
  isAllowedAddress?: AddressPolicy
  avatarRowsKept?: number
  /** Keys whose rate-limit windows are remembered at most (tests: small, to reach it). */
  rateLimitKeys?: number
  /** Tokens remembered at most, valid and unknown each (tests: small, to reach it). */
  tokensKept?: number
  /** Agents per batch of the unpaginated list (tests: small, so a short list takes several). */
  listBatchSize?: number
  beforeCollect?: () => Promise<void>
  /** This instance's clock, in unix seconds (tests: one running ahead of another instance's). */
  clock?: () => number
}

/** A clock in unix seconds as one in milliseconds (the milliseconds of the real one). */
function clockMs (seconds: (() => number) | undefined): (() => number) | undefined {
  return seconds === undefined ? undefined : () => seconds() * 1000 + Date.now() % 1000
}

/** Opens the stores named by config, brings the schema up to date and wires the domain services. */
export async function createServices (config: Config, overrides: ServiceOverrides = {}): Promise<Services> {
  const database = await openDatabase(config.database)
  const target = config.database
  let sqliteWindows: SqliteRateWindows | undefined
  try {
    await migrateToLatest(database.db, database.dialect)
    if (config.rateLimit.max > 0 && target.kind === 'sqlite' && target.file !== ':memory:') sqliteWindows = await openSqliteRateWindows(target.file)
  } catch (err) {
    await database.close()
    throw err
  }
  configureImageLibrary()
  const store = await createBlobStore(config)
  // Only where every write is seen (see AgentReadCache): the SQLite store, one file on one machine.
  const readCache = database.externalChanges !== undefined && config.agentCacheEntries > 0
    ? new AgentReadCache(config.agentCacheEntries, database.externalChanges)
    : undefined
  // Elsewhere (PostgreSQL) lists are kept and checked against the database before each answer.
  const checkedLists = database.dialect === 'postgres' && config.agentCacheEntries > 0 ? new CheckedLists() : undefined
  const budget = new ProcessingBudget(config.avatar.processingPixels, config.avatar.timeoutMs)
  const streams = new EventStreams(database.db, config.events)
  const metrics = createMetrics(database.poolStats, {
    agents: () => readCache?.stats(),
    lists: () => readCache?.stats().lists ?? checkedLists?.stats()
  }, () => budget.counts(), () => streams.stats())
  const tokens = new TokenService(database.db, undefined, overrides.tokensKept)
  // Avatar hosts and webhook endpoints: names asked of the DNS without holding the thread pool.
  const resolver = new OutboundResolver(config.dnsServers)
  const avatars = new AvatarService({
    store,
    staticBaseUrl: config.staticBaseUrl,
    limits: config.avatar,
    isAllowedAddress: overrides.isAllowedAddress,
    resolver,
    observer: metrics.avatars,
    budget
  })
  const agents = new AgentService(database.db, avatars, {
    presenceTtlSeconds: config.presenceTtlSeconds,
    blobGcGraceSeconds: config.avatarGcGraceSeconds,
    dialect: database.dialect,
    transact: database.transact,
    readCache,
    checkedLists,
    shownKept: config.agentCacheEntries,
    prepared: database.prepared,
    avatarRowsKept: overrides.avatarRowsKept,
    listBatchSize: overrides.listBatchSize,
    beforeCollect: overrides.beforeCollect,
    now: overrides.clock
  })
  const webhooks = new WebhookService(database.db, database.dialect, database.transact, {
    ...config.webhooks,
    isAllowedAddress: overrides.isAllowedAddress ?? addressPolicy(config.webhooks.allowPrivateNetworks),
    resolver,
    clock: clockMs(overrides.clock)
  })
  const idempotencyKeys = new IdempotencyKeys(database.db, idempotencyClaimSeconds(config.avatar.timeoutMs))
  // Instances add up their counts (see RateLimiter): through the database on PostgreSQL, through a
  // file of their own beside an SQLite database (not in it: see rateWindowsFileOf).
  const { max, windowMs } = config.rateLimit
  const addCounts: SharedCounts['add'] | undefined = database.dialect === 'postgres'
    ? async (counts, now, ms) => await addToRateWindows(database.db, counts, now, ms)
    : sqliteWindows === undefined ? undefined : async (counts, now, ms) => await whileBusy(50, () => sqliteWindows.add(counts, now, ms))
  const rateLimiter = max === 0
    ? undefined
    : new RateLimiter(max, windowMs, addCounts === undefined
      ? undefined
      : {
          add: addCounts,
          shares: (key) => isAddressKey(key) ? false : tokens.wasValid(key),
          exchanged: metrics.rateLimitExchanged
        }, overrides.rateLimitKeys)
  const stopMaintenance = startMaintenance(config, database, store, agents, webhooks, metrics)
  return {
    config,
    database,
    store,
    tokens,
    avatars,
    agents,
    webhooks,
    streams,
    idempotencyKeys,
    metrics,
    rateLimiter,
    version: VERSION,
    checkReady: async () => { await Promise.all([pingDatabase(database.db), store.checkReady()]) },
    close: async () => {
      streams.closeAll()
      await stopMaintenance()
      await rateLimiter?.close()
      sqliteWindows?.close()
      idempotencyKeys.close()
      await database.close()
      store.close?.()
      avatars.close()
      webhooks.close()
    }
  }
}
