import { Resolver } from 'node:dns'
import { isIP } from 'node:net'
import path from 'node:path'
import { Type, type Static } from 'typebox'
import { Ajv } from 'ajv'

/**
 * Every setting the service reads, with its environment variable, default and bounds.
 * Read once by loadConfig(); nothing else in src/ touches process.env.
 */
const EnvSchema = Type.Object({
  HOST: Type.String({ default: '127.0.0.1', minLength: 1 }),
  PORT: Type.Integer({ default: 3000, minimum: 0, maximum: 65535 }),
  TRUST_PROXY: Type.Optional(Type.String({ minLength: 1 })),
  DNS_SERVERS: Type.Optional(Type.String({ minLength: 1 })),
  DATA_DIR: Type.String({ default: './data', minLength: 1 }),
  DATABASE_URL: Type.Optional(Type.String({ minLength: 1 })),
  DATABASE_POOL_SIZE: Type.Integer({ default: 10, minimum: 1, maximum: 1000 }),
  DATABASE_STATEMENT_TIMEOUT_MS: Type.Integer({ default: 5000, minimum: 0, maximum: 3600000 }),
  STORAGE_URL: Type.Optional(Type.String({ pattern: '^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|file:.+)$' })),
  S3_FORCE_PATH_STYLE: Type.Optional(Type.Boolean()),
  AWS_ENDPOINT_URL_S3: Type.Optional(Type.String({ pattern: '^https?://' })),
  STORAGE_TIMEOUT_MS: Type.Integer({ default: 5000, minimum: 100, maximum: 600000 }),
  AWS_ENDPOINT_URL: Type.Optional(Type.String({ pattern: '^https?://' })),
  AWS_REGION: Type.Optional(Type.String({ minLength: 1 })),
  AWS_DEFAULT_REGION: Type.Optional(Type.String({ minLength: 1 })),
  METRICS_TOKEN: Type.Optional(Type.String({ minLength: 8, maxLength: 256, pattern: '^[\\x21-\\x7e]+$' })),
  STATIC_BASE_URL: Type.Optional(Type.String({ pattern: '^https?://' })),
  BOOTSTRAP_TOKEN: Type.Optional(Type.String({ minLength: 16, maxLength: 256, pattern: '^[\\x21-\\x7e]+$' })),
  LOG_LEVEL: Type.Unsafe<'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'>({
    type: 'string',
    enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'],
    default: 'info'
  }),
  BODY_LIMIT_BYTES: Type.Integer({ default: 65536, minimum: 1024, maximum: 104857600 }),
  REQUEST_TIMEOUT_MS: Type.Integer({ default: 300000, minimum: 0, maximum: 3600000 }),
  AVATAR_ALLOW_PRIVATE_NETWORKS: Type.Boolean({ default: false }),
  AVATAR_MAX_BYTES: Type.Integer({ default: 10485760, minimum: 1024, maximum: 104857600 }),
  AVATAR_MAX_PIXELS: Type.Integer({ default: 40000000, minimum: 1, maximum: 1000000000 }),
  AVATAR_MAX_FRAMES: Type.Integer({ default: 1000, minimum: 1, maximum: 100000 }),
  AVATAR_PROCESSING_PIXELS: Type.Integer({ default: 40000000, minimum: 1000000, maximum: 1000000000 }),
  AVATAR_TIMEOUT_MS: Type.Integer({ default: 10000, minimum: 100, maximum: 300000 }),
  AVATAR_MAX_REDIRECTS: Type.Integer({ default: 3, minimum: 0, maximum: 10 }),
  SHUTDOWN_TIMEOUT_MS: Type.Integer({ default: 10000, minimum: 100, maximum: 600000 }),
  PRESENCE_TTL_SECONDS: Type.Integer({ default: 60, minimum: 1, maximum: 86400 }),
  AVATAR_GC_GRACE_SECONDS: Type.Integer({ default: 300, minimum: 0, maximum: 2592000 }),
  AVATAR_LEFTOVERS_SWEEP_SECONDS: Type.Integer({ default: 21600, minimum: 0, maximum: 2592000 }),
  MAINTENANCE_INTERVAL_MS: Type.Integer({ default: 1000, minimum: 50, maximum: 3600000 }),
  IDEMPOTENCY_TTL_SECONDS: Type.Integer({ default: 86400, minimum: 60, maximum: 2592000 }),
  AGENT_CACHE_ENTRIES: Type.Integer({ default: 10000, minimum: 0, maximum: 10000000 }),
  STATIC_CACHE_BYTES: Type.Integer({ default: 16777216, minimum: 0, maximum: 17179869184 }),
  RATE_LIMIT_MAX: Type.Integer({ default: 1000, minimum: 0, maximum: 100000000 }),
  RATE_LIMIT_WINDOW_MS: Type.Integer({ default: 10000, minimum: 1000, maximum: 86400000 }),
  EVENTS_RETENTION_SECONDS: Type.Integer({ default: 604800, minimum: 60, maximum: 31536000 }),
  EVENTS_POLL_MS: Type.Integer({ default: 250, minimum: 20, maximum: 60000 }),
  EVENTS_HEARTBEAT_MS: Type.Integer({ default: 15000, minimum: 100, maximum: 300000 }),
  EVENTS_MAX_STREAMS: Type.Integer({ default: 100, minimum: 1, maximum: 1000000 }),
  WEBHOOK_ALLOW_PRIVATE_NETWORKS: Type.Boolean({ default: false }),
  WEBHOOK_TIMEOUT_MS: Type.Integer({ default: 10000, minimum: 100, maximum: 120000 }),
  WEBHOOK_RETRY_BASE_MS: Type.Integer({ default: 5000, minimum: 10, maximum: 3600000 }),
  WEBHOOK_RETRY_MAX_MS: Type.Integer({ default: 3600000, minimum: 10, maximum: 86400000 }),
  WEBHOOK_RETRY_WINDOW_SECONDS: Type.Integer({ default: 259200, minimum: 1, maximum: 2592000 })
})
type Env = Static<typeof EnvSchema>

export type DatabaseTarget =
  | { kind: 'sqlite', file: string }
  | { kind: 'postgres', url: string, poolSize: number, statementTimeoutMs: number }

export type StorageTarget =
  | { kind: 'local', dir: string }
  | {
    kind: 's3'
    bucket: string
    /** Key prefix inside the bucket, without leading or trailing slash; may be empty. */
    prefix: string
    /** Custom endpoint of an S3-compatible server; undefined means AWS itself. */
    endpoint: string | undefined
    region: string
    forcePathStyle: boolean
    /** How long a request to the bucket may take to connect, to be answered, or go idle (STORAGE_TIMEOUT_MS). */
    timeoutMs: number
  }

export interface Config {
  readonly host: string
  readonly port: number
  readonly dataDir: string
  readonly database: DatabaseTarget
  readonly storage: StorageTarget
  /** Base of the avatar URLs the API returns; no trailing slash. */
  readonly staticBaseUrl: string
  readonly bootstrapToken: string | undefined
  readonly logLevel: Env['LOG_LEVEL']
  readonly bodyLimitBytes: number
  /** How long a client may take to send a whole request, headers and body (0: no limit). */
  readonly requestTimeoutMs: number
  readonly avatar: {
    readonly allowPrivateNetworks: boolean
    readonly maxBytes: number
    readonly maxPixels: number
    readonly maxFrames: number
    /** Decoded pixels processed at once on this instance (AVATAR_PROCESSING_PIXELS; see ProcessingBudget). */
    readonly processingPixels: number
    readonly timeoutMs: number
    readonly maxRedirects: number
  }
  readonly shutdownTimeoutMs: number
  readonly presenceTtlSeconds: number
  readonly avatarGcGraceSeconds: number
  /** How often each instance looks through the avatar store for images left by writes that never finished; 0: never. */
  readonly avatarLeftoversSweepSeconds: number
  readonly maintenanceIntervalMs: number
  readonly idempotencyTtlSeconds: number
  readonly events: { readonly retentionSeconds: number, readonly pollMs: number, readonly heartbeatMs: number, readonly maxStreams: number }
  readonly webhooks: {
    readonly allowPrivateNetworks: boolean
    readonly timeoutMs: number
    readonly retryBaseMs: number
    readonly retryMaxMs: number
    readonly retryWindowSeconds: number
  }
  /** Agents kept in memory: the read cache (SQLite) and each agent as last shown (both stores); 0 turns them off. */
  readonly agentCacheEntries: number
  /** Bytes of small avatar files kept in memory to serve /static from (local disk only); 0 turns it off. */
  readonly staticCacheBytes: number
  /** Requests per token per window; 0 turns rate limiting off. */
  readonly rateLimit: { readonly max: number, readonly windowMs: number }
  /** When set, GET /metrics requires `Authorization: Bearer <this>`. */
  readonly metricsToken: string | undefined
  /**
   * The proxies whose X-Forwarded-For is believed for the client's address (Fastify's trustProxy):
   * false (none), or their addresses and CIDR ranges (and `loopback`, `linklocal`, `uniquelocal`).
   */
  readonly trustProxy: false | readonly string[]
  /** Name servers asked for avatar hosts and webhook endpoints (`ip` or `ip:port`); undefined: the system's. */
  readonly dnsServers: readonly string[] | undefined
}

export class ConfigError extends Error {
  override name = 'ConfigError'
}

const SECRET_VARIABLES = new Set(['BOOTSTRAP_TOKEN', 'DATABASE_URL', 'METRICS_TOKEN'])

const ajv = new Ajv({ coerceTypes: true, useDefaults: true, allErrors: true, strict: false })
const validateEnv = ajv.compile<Env>(EnvSchema)

/** Validates the environment once and returns a frozen Config; throws ConfigError naming each bad variable. */
export function loadConfig (env: NodeJS.ProcessEnv = process.env): Config {
  const raw: Record<string, unknown> = {}
  for (const key of Object.keys(EnvSchema.properties)) {
    const value = env[key]
    if (value !== undefined && value !== '') raw[key] = value
  }
  for (const key of ['AVATAR_ALLOW_PRIVATE_NETWORKS', 'S3_FORCE_PATH_STYLE', 'WEBHOOK_ALLOW_PRIVATE_NETWORKS']) {
    if (typeof raw[key] === 'string') raw[key] = parseBoolean(raw[key])
  }
  if (!validateEnv(raw)) {
    const problems = (validateEnv.errors ?? []).map((e) => {
      const name = e.instancePath.replace(/^\//, '') || String(e.params.missingProperty ?? '')
      // Secrets are named, never echoed: a rejected value may still be a real credential.
      const shown = SECRET_VARIABLES.has(name) ? 'value not shown' : `got ${JSON.stringify(raw[name])}`
      return `${name} ${e.message ?? 'is invalid'} (${shown})`
    })
    throw new ConfigError(`Invalid configuration: ${problems.join('; ')}`)
  }
  const e = raw
  const dataDir = path.resolve(e.DATA_DIR)
  return deepFreeze({
    host: e.HOST,
    port: e.PORT,
    dataDir,
    database: parseDatabaseUrl(e, dataDir),
    storage: parseStorageUrl(e, dataDir),
    staticBaseUrl: parseStaticBaseUrl(e.STATIC_BASE_URL, e.PORT),
    bootstrapToken: e.BOOTSTRAP_TOKEN,
    logLevel: e.LOG_LEVEL,
    bodyLimitBytes: e.BODY_LIMIT_BYTES,
    requestTimeoutMs: e.REQUEST_TIMEOUT_MS,
    avatar: {
      allowPrivateNetworks: e.AVATAR_ALLOW_PRIVATE_NETWORKS,
      maxBytes: e.AVATAR_MAX_BYTES,
      maxPixels: e.AVATAR_MAX_PIXELS,
      maxFrames: e.AVATAR_MAX_FRAMES,
      processingPixels: e.AVATAR_PROCESSING_PIXELS,
      timeoutMs: e.AVATAR_TIMEOUT_MS,
      maxRedirects: e.AVATAR_MAX_REDIRECTS
    },
    shutdownTimeoutMs: e.SHUTDOWN_TIMEOUT_MS,
    presenceTtlSeconds: e.PRESENCE_TTL_SECONDS,
    avatarGcGraceSeconds: e.AVATAR_GC_GRACE_SECONDS,
    avatarLeftoversSweepSeconds: e.AVATAR_LEFTOVERS_SWEEP_SECONDS,
    maintenanceIntervalMs: e.MAINTENANCE_INTERVAL_MS,
    idempotencyTtlSeconds: e.IDEMPOTENCY_TTL_SECONDS,
    agentCacheEntries: e.AGENT_CACHE_ENTRIES,
    staticCacheBytes: e.STATIC_CACHE_BYTES,
    rateLimit: { max: e.RATE_LIMIT_MAX, windowMs: e.RATE_LIMIT_WINDOW_MS },
    events: { retentionSeconds: e.EVENTS_RETENTION_SECONDS, pollMs: e.EVENTS_POLL_MS, heartbeatMs: e.EVENTS_HEARTBEAT_MS, maxStreams: e.EVENTS_MAX_STREAMS },
    webhooks: {
      allowPrivateNetworks: e.WEBHOOK_ALLOW_PRIVATE_NETWORKS,
      timeoutMs: e.WEBHOOK_TIMEOUT_MS,
      retryBaseMs: e.WEBHOOK_RETRY_BASE_MS,
      retryMaxMs: e.WEBHOOK_RETRY_MAX_MS,
      retryWindowSeconds: e.WEBHOOK_RETRY_WINDOW_SECONDS
    },
    metricsToken: e.METRICS_TOKEN,
    trustProxy: parseTrustProxy(e.TRUST_PROXY),
    dnsServers: parseDnsServers(e.DNS_SERVERS)
  })
}

/** STATIC_BASE_URL without its trailing slashes; one that is not a URL is refused here, not when first used. */
function parseStaticBaseUrl (value: string | undefined, port: number): string {
  const url = (value ?? `http://localhost:${port}/static`).replace(/\/+$/, '')
  const parsed = URL.canParse(url) ? new URL(url) : undefined
  if (parsed === undefined || !['http:', 'https:'].includes(parsed.protocol) || parsed.hostname === '') {
    throw new ConfigError(`Invalid configuration: STATIC_BASE_URL must be an http(s) URL such as https://cdn.example.com/avatars (got ${JSON.stringify(value)})`)
  }
  return url
}

/** DNS_SERVERS: a comma-separated list of name servers, each `ip`, `ip:port` or `[ipv6]:port`. */
function parseDnsServers (value: string | undefined): string[] | undefined {
  if (value === undefined) return undefined
  const servers = value.split(',').map((s) => s.trim())
  try {
    // The resolver's own parser: what it takes is exactly what will be used.
    new Resolver().setServers(servers)
    if (servers.some((s) => Number(/\]?:(\d+)$/.exec(s)?.[1] ?? 53) > 65535)) throw new Error('port')
  } catch {
    throw new ConfigError(`Invalid configuration: DNS_SERVERS must be a comma-separated list of name servers' addresses, each \`ip\`, \`ip:port\` or \`[ipv6]:port\` (got ${JSON.stringify(value)})`)
  }
  return servers
}

const PROXY_NAMES = new Set(['loopback', 'linklocal', 'uniquelocal'])

/**
 * TRUST_PROXY: unset or `false` (no proxy: the connection's address is the client's), or a
 * comma-separated list of the proxies' addresses or CIDR ranges (and `loopback`, `linklocal`,
 * `uniquelocal`). Neither `true` (any sender may claim any address) nor a number of hops (which
 * cannot tell a proxy from a client) is taken: a client reaching the port directly could pick its
 * own address, and so its own rate-limit window.
 */
function parseTrustProxy (value: string | undefined): false | string[] {
  if (value === undefined) return false
  const v = value.trim().toLowerCase()
  if (['false', 'no', 'off'].includes(v)) return false
  const items = v.split(',').map((item) => item.trim())
  const bad = items.find((item) => !PROXY_NAMES.has(item) && !isAddressOrRange(item))
  if (bad !== undefined) {
    throw new ConfigError(`Invalid configuration: TRUST_PROXY must be a comma-separated list of the proxies' addresses or CIDR ranges (or loopback, linklocal, uniquelocal); ${JSON.stringify(bad)} is not one`)
  }
  return items
}

function isAddressOrRange (item: string): boolean {
  const slash = item.indexOf('/')
  const address = slash === -1 ? item : item.slice(0, slash)
  const family = isIP(address)
  if (family === 0) return false
  if (slash === -1) return true
  const bits = item.slice(slash + 1)
  return /^[0-9]{1,3}$/.test(bits) && Number(bits) <= (family === 4 ? 32 : 128)
}

function parseBoolean (value: string): boolean | string {
  const v = value.trim().toLowerCase()
  if (['true', '1', 'yes', 'on'].includes(v)) return true
  if (['false', '0', 'no', 'off'].includes(v)) return false
  return value // left as a string so validation names the variable
}

function parseDatabaseUrl (e: Env, dataDir: string): DatabaseTarget {
  const url = e.DATABASE_URL
  if (url === undefined) return { kind: 'sqlite', file: path.join(dataDir, 'agentry.db') }
  if (/^postgres(ql)?:\/\//.test(url)) {
    return { kind: 'postgres', url, poolSize: e.DATABASE_POOL_SIZE, statementTimeoutMs: e.DATABASE_STATEMENT_TIMEOUT_MS }
  }
  const sqlite = /^sqlite:(?:\/\/)?(.+)$/.exec(url)
  if (sqlite?.[1] !== undefined) return { kind: 'sqlite', file: sqlite[1] === ':memory:' ? ':memory:' : path.resolve(sqlite[1]) }
  throw new ConfigError(`Invalid configuration: DATABASE_URL must start with postgres:// or sqlite: (got ${JSON.stringify(url.replace(/\/\/[^@/]*@/, '//***@'))})`)
}

function parseStorageUrl (e: Env, dataDir: string): StorageTarget {
  const url = e.STORAGE_URL
  if (url === undefined) return { kind: 'local', dir: path.join(dataDir, 'avatars') }
  if (url.startsWith('file:')) return { kind: 'local', dir: path.resolve(url.replace(/^file:(\/\/)?/, '')) }
  const parsed = new URL(url)
  const endpoint = e.AWS_ENDPOINT_URL_S3 ?? e.AWS_ENDPOINT_URL
  return {
    kind: 's3',
    bucket: parsed.hostname,
    prefix: parsed.pathname.replace(/^\/+|\/+$/g, ''),
    endpoint,
    region: e.AWS_REGION ?? e.AWS_DEFAULT_REGION ?? 'us-east-1',
    // S3-compatible servers (MinIO, Ceph, s3rver...) generally want path-style addressing.
    forcePathStyle: e.S3_FORCE_PATH_STYLE ?? endpoint !== undefined,
    timeoutMs: e.STORAGE_TIMEOUT_MS
  }
}

function deepFreeze<T extends object> (value: T): T {
  for (const v of Object.values(value)) {
    if (typeof v === 'object' && v !== null) deepFreeze(v)
  }
  return Object.freeze(value)
}
