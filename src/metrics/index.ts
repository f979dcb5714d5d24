import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { ProcessingCounts } from '../avatars/budget.js'
import type { PoolStats } from '../db/index.js'
import { RequestMetrics } from './requests.js'
import type { CacheCounts } from '../agents/read-cache.js'
import type { StreamStats } from '../events/stream.js'

/** What the avatar pipeline reports: how long each stage took, and why an ingest failed. */
export interface AvatarObserver {
  stage: (stage: 'download' | 'wait' | 'process' | 'store', seconds: number) => void
  failed: (reason: string) => void
}

export interface Metrics {
  registry: Registry
  /** Every answered request: agentry_http_requests_total and agentry_http_request_duration_seconds. */
  requests: RequestMetrics
  /** Counts a request answered ahead of Fastify (agentry_http_fast_answers_total). */
  fastAnswered: () => void
  avatars: AvatarObserver
  /** Counts an exchange of rate-limit counts with the other instances (agentry_rate_limit_exchanges_total). */
  rateLimitExchanged: (ok: boolean) => void
  /** Counts a look through the avatar store for leftovers, and the images it handed to the file collector. */
  leftoversHandedOver: (images: number) => void
}

/** Seconds, from a millisecond to ten: API answers and avatar stages both fall in this range. */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

/** What the caches report when scraped (see AgentReadCache.stats and CheckedLists.stats); undefined where there is none. */
export interface CacheStats {
  agents: () => CacheCounts | undefined
  lists: () => CacheCounts | undefined
}

/** One registry per service instance (tests run several in one process), Prometheus text format. */
export function createMetrics (
  poolStats: () => PoolStats | undefined,
  caches: CacheStats = { agents: () => undefined, lists: () => undefined },
  processing: () => ProcessingCounts | undefined = () => undefined,
  streams: () => StreamStats | undefined = () => undefined
): Metrics {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'agentry_' })

  const requests = new RequestMetrics(LATENCY_BUCKETS)
  requests.register(registry, {
    counter: 'agentry_http_requests_total',
    histogram: 'agentry_http_request_duration_seconds'
  }, {
    counter: 'HTTP requests answered, by method, route template and status code.',
    histogram: 'Time to answer HTTP requests, by method, route template and status code.'
  })
  const avatarStage = new Histogram({
    name: 'agentry_avatar_stage_duration_seconds',
    help: 'Time spent in each avatar pipeline stage: download, wait (for room among the images in progress, AVATAR_PROCESSING_PIXELS), process (decode, orient, variants), store.',
    labelNames: ['stage'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [registry]
  })
  const avatarFailures = new Counter({
    name: 'agentry_avatar_failures_total',
    help: 'Avatar ingests refused or failed, by reason (the error code clients see).',
    labelNames: ['reason'] as const,
    registers: [registry]
  })
  new Gauge({
    name: 'agentry_db_pool_connections',
    help: 'Database pool connections by state (PostgreSQL only; SQLite uses one connection).',
    labelNames: ['state'] as const,
    registers: [registry],
    collect () {
      const stats = poolStats()
      if (stats === undefined) return
      this.set({ state: 'total' }, stats.total)
      this.set({ state: 'idle' }, stats.idle)
      this.set({ state: 'waiting' }, stats.waiting)
    }
  })

  /** A gauge read when scraped: what it reports counts with plain numbers, not prom-client calls. */
  const scrapedGauge = (name: string, help: string, read: () => number | undefined): void => {
    new Gauge({
      name,
      help,
      registers: [registry],
      collect () {
        const value = read()
        if (value !== undefined) this.set(value)
      }
    })
  }

  // Read from the cache when scraped, so the hot path counts with plain numbers, not prom-client calls.
  const cacheMetrics = (name: string, held: string, lookups: string, read: () => CacheCounts | undefined): void => {
    scrapedGauge(`${name}_entries`, held, () => read()?.entries)
    new Counter({
      name: `${name}_lookups_total`,
      help: `${lookups} lookups in the read cache since start, by result: hit (answered from memory) or miss.`,
      labelNames: ['result'] as const,
      registers: [registry],
      collect () {
        const stats = read()
        if (stats === undefined) return
        this.reset()
        this.inc({ result: 'hit' }, stats.hits)
        this.inc({ result: 'miss' }, stats.misses)
      }
    })
  }
  cacheMetrics('agentry_agent_cache', 'Agents held ready to answer GET /agents/:id from memory (SQLite only; see AGENT_CACHE_ENTRIES).',
    'GET /agents/:id', caches.agents)
  cacheMetrics('agentry_list_cache', 'Answers to GET /agents (and on SQLite GET /agents/availability) held ready to send again: on SQLite while nothing is written, on PostgreSQL each after a check that its rows are unchanged (see AGENT_CACHE_ENTRIES).',
    'GET /agents (and on SQLite GET /agents/availability)', caches.lists)

  scrapedGauge('agentry_avatar_processing_pixels', 'Pixels of the avatar images being decoded and resized now, counted against AVATAR_PROCESSING_PIXELS.',
    () => processing()?.pixels)
  scrapedGauge('agentry_avatar_processing_queued', 'Avatar images waiting for room among those being processed (AVATAR_PROCESSING_PIXELS).',
    () => processing()?.queued)
  // Event streams: read when scraped, like the caches (EventStreams counts with plain numbers).
  new Gauge({
    name: 'agentry_event_streams',
    help: 'Event streams (GET /events) open on this instance, by state: live (fed by their widget\'s shared poller) or catching_up (reading on their own until they reach it: resumed from an older Last-Event-ID, or their client stopped reading).',
    labelNames: ['state'] as const,
    registers: [registry],
    collect () {
      const stats = streams()
      if (stats === undefined) return
      this.set({ state: 'live' }, stats.live)
      this.set({ state: 'catching_up' }, stats.catchingUp)
    }
  })
  scrapedGauge('agentry_event_stream_pollers', 'Widgets whose event log this instance polls every EVENTS_POLL_MS for their open streams: one poller per widget, whatever its number of streams.',
    () => streams()?.pollers)
  new Counter({
    name: 'agentry_event_stream_reads_total',
    help: 'Reads of a widget\'s event log for its streams since start, by whom: shared (a widget\'s poller, for all its live streams) or own (a stream catching up).',
    labelNames: ['by'] as const,
    registers: [registry],
    collect () {
      const stats = streams()
      if (stats === undefined) return
      this.reset()
      this.inc({ by: 'shared' }, stats.sharedReads)
      this.inc({ by: 'own' }, stats.ownReads)
    }
  })

  const exchanges = new Counter({
    name: 'agentry_rate_limit_exchanges_total',
    help: 'Exchanges of rate-limit counts with the other instances (through PostgreSQL, or the SQLite rate-limit file), by result: ok or failed (each instance then counts alone until one succeeds).',
    labelNames: ['result'] as const,
    registers: [registry]
  })

  const leftoverSweeps = new Counter({
    name: 'agentry_avatar_leftover_sweeps_total',
    help: 'Looks through the whole avatar store for images that writes which never finished left behind (AVATAR_LEFTOVERS_SWEEP_SECONDS), completed by this instance.',
    registers: [registry]
  })
  const leftoverImages = new Counter({
    name: 'agentry_avatar_leftover_images_total',
    help: 'Images nothing referred to or would delete (left by writes that never finished) that this instance handed to the file collector.',
    registers: [registry]
  })

  let fastAnswers = 0
  new Counter({
    name: 'agentry_http_fast_answers_total',
    help: 'Requests answered ahead of the full request pipeline: GET /agents/:id (from memory or the database), GET /agents kept whole (SQLite) and GET of small /static files from memory (also counted in agentry_http_requests_total).',
    registers: [registry],
    collect () {
      this.reset()
      this.inc(fastAnswers)
    }
  })

  return {
    registry,
    requests,
    fastAnswered: () => { fastAnswers++ },
    avatars: {
      stage: (stage, seconds) => { avatarStage.observe({ stage }, seconds) },
      failed: (reason) => { avatarFailures.inc({ reason }) }
    },
    rateLimitExchanged: (ok) => { exchanges.inc({ result: ok ? 'ok' : 'failed' }) },
    leftoversHandedOver: (images) => {
      leftoverSweeps.inc()
      leftoverImages.inc(images)
    }
  }
}
