import fs from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { loadConfig } from '../../src/config/index.js'
import { buildApp } from '../../src/http/app.js'
import { createServices, type ServiceOverrides, type Services } from '../../src/start/services.js'
import { after, before } from 'node:test'
import SQLite from 'better-sqlite3'
import pg from 'pg'
import { provisionStores } from './stores.js'
import { startFixtureServer, type FixtureServer } from './fixtures.js'
import { until } from './process.js'

export const TEST_TOKEN = 'test-token-0123456789abcdef'

/** Server settings under which unreferenced avatar files are collected at once (production waits AVATAR_GC_GRACE_SECONDS). */
export const COLLECT_AT_ONCE: Readonly<Record<string, string>> = { AVATAR_GC_GRACE_SECONDS: '0', MAINTENANCE_INTERVAL_MS: '100' }

export interface TestServer {
  url: string
  api: string
  token: string
  dataDir: string
  /** The variables this server was started with, its stores included: another started with them shares its database and avatar store. */
  sharedEnv: Record<string, string>
  services: Services
  /** Keys of every file in the avatar store (local folder or bucket), sorted. */
  storedFiles: () => Promise<string[]>
  /** Calls the API with the test token unless headers say otherwise; parses the JSON envelope. */
  call: (method: string, path: string, body?: unknown, headers?: Record<string, string>) => Promise<ApiResponse>
  close: () => Promise<void>
}

export interface ApiResponse {
  status: number
  headers: Headers
  // The envelope as the client sees it; tests assert on its fields.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body: any
}

export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo
      srv.close(() => { resolve(port) })
    })
    srv.on('error', reject)
  })
}

export function tempDir (prefix = 'agentry-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix))
}

/** Every file under dir, relative, sorted: to show that a failed request left nothing behind. */
export function listFiles (dir: string): string[] {
  if (!fs.existsSync(dir)) return []
  return (fs.readdirSync(dir, { recursive: true, withFileTypes: true }))
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
    .sort()
}

/**
 * Starts the real service (real SQLite file, real disk, real HTTP on loopback) with test-friendly
 * limits. Fixture images are served from loopback, so private networks are allowed unless a test
 * says otherwise.
 */
export async function startTestServer (env: Record<string, string> = {}, overrides: ServiceOverrides = {}): Promise<TestServer> {
  const dataDir = tempDir()
  const port = await freePort()
  const stores = await provisionStores()
  const config = loadConfig({
    HOST: '127.0.0.1',
    PORT: String(port),
    DATA_DIR: dataDir,
    LOG_LEVEL: 'silent',
    BOOTSTRAP_TOKEN: TEST_TOKEN,
    AVATAR_ALLOW_PRIVATE_NETWORKS: 'true',
    AVATAR_TIMEOUT_MS: '1500',
    AVATAR_MAX_BYTES: '2097152',
    ...stores.env,
    ...env
  })
  const services = await createServices(config, overrides)
  await services.tokens.bootstrap(config.bootstrapToken)
  const app = await buildApp({ ...services, logger: false })
  await app.listen({ host: config.host, port: config.port })
  const url = `http://127.0.0.1:${port}`
  const call: TestServer['call'] = async (method, p, body, headers = {}) => {
    const init: RequestInit = { method, headers: { authorization: `Bearer ${TEST_TOKEN}`, ...headers } }
    if (body !== undefined) {
      if (typeof body === 'string') init.body = body
      else {
        init.body = JSON.stringify(body)
        ;(init.headers as Record<string, string>)['content-type'] ??= 'application/json'
      }
    }
    const res = await fetch(`${url}${p}`, init)
    const text = await res.text()
    let parsed: unknown = text
    try { parsed = JSON.parse(text) } catch { /* not JSON: the test will say so */ }
    return { status: res.status, headers: res.headers, body: parsed }
  }
  return {
    url,
    api: `${url}/api/external/v1`,
    token: TEST_TOKEN,
    dataDir,
    sharedEnv: { ...stores.env, DATA_DIR: config.dataDir, ...env },
    services,
    storedFiles: async () => {
      const keys: string[] = []
      for await (const { key } of services.store.list()) keys.push(key)
      return keys.sort()
    },
    // `/agents...` is short for the API path; anything else is used as given.
    call: (method, p, body, headers) => call(method, p.startsWith('/agents') ? `/api/external/v1${p}` : p, body, headers),
    close: async () => {
      await app.close()
      await services.close()
      await stores.drop()
      fs.rmSync(dataDir, { recursive: true, force: true })
    }
  }
}

/** POST /agents as multipart/form-data: an agent with this serviceUserId and name, and the bytes as its avatar file. */
export async function createWithUpload (srv: TestServer, serviceUserId: string, name: string, bytes: Buffer): Promise<ApiResponse> {
  const data = new FormData()
  data.append('serviceUserId', serviceUserId)
  data.append('name', name)
  data.append('avatar', new Blob([bytes]), 'avatar')
  const res = await fetch(`${srv.api}/agents`, { method: 'POST', headers: { authorization: `Bearer ${srv.token}` }, body: data })
  return { status: res.status, headers: res.headers, body: await res.json() as ApiResponse['body'] }
}

/**
 * A plain GET through node:http. fetch() adds `cache-control: no-cache` to conditional requests,
 * which (rightly) defeats If-None-Match, so conditional requests go through this instead.
 */
export async function rawGet (url: string, headers: Record<string, string> = {}): Promise<RawResponse> {
  return await new Promise((resolve, reject) => {
    http.get(url, { headers }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, headers: res.headers, rawHeaders: res.rawHeaders, body: Buffer.concat(chunks) }) })
      res.on('error', reject)
    }).on('error', reject)
  })
}

/**
 * The value of one series of the server's /metrics (`server` is a test server or a spawned
 * instance: anything with a url): `name` is a metric without labels
 * (`agentry_http_fast_answers_total`) or one series of it, labels and all
 * (`agentry_http_requests_total{method="GET",...}`); a bare name of a labelled metric takes its
 * first series. undefined when the server shows no such series.
 */
export async function metricSeries (server: { url: string }, name: string): Promise<number | undefined> {
  const text = await (await fetch(`${server.url}/metrics`)).text()
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`))
  return line === undefined ? undefined : Number(line.split(' ').at(-1))
}

/** metricSeries, 0 when there is no such series yet (a counter nothing has counted). */
export async function metricValue (server: { url: string }, name: string): Promise<number> {
  return await metricSeries(server, name) ?? 0
}

export interface RawResponse {
  status: number
  headers: http.IncomingHttpHeaders
  /** As received: names and values alternating, in the order the server wrote them. */
  rawHeaders: string[]
  body: Buffer
}

/** The response's headers in the order they came, names lower-cased, with their values. */
export function headerPairs (res: RawResponse): Array<[string, string]> {
  const out: Array<[string, string]> = []
  for (let i = 0; i < res.rawHeaders.length; i += 2) out.push([(res.rawHeaders[i] as string).toLowerCase(), res.rawHeaders[i + 1] as string])
  return out
}

/**
 * A fixture image server and a test server for the enclosing describe(): both started by its
 * before() hook and handed to `take`, both closed by its after() hook (whichever of them started).
 * `env` and `overrides` are startTestServer's.
 */
export function serversForSuite (take: (srv: TestServer, fx: FixtureServer) => void, env: Record<string, string> = {}, overrides: ServiceOverrides = {}): void {
  let srv: TestServer | undefined
  let fx: FixtureServer | undefined
  before(async () => {
    fx = await startFixtureServer()
    srv = await startTestServer(env, overrides)
    take(srv, fx)
  })
  after(async () => {
    await srv?.close()
    await fx?.close()
  })
}

/**
 * Another process's lock on the test server's database, held until release(), as a second process
 * would hold it: on SQLite the write lock (every write waits for it), on PostgreSQL a lock of `mode`
 * on `table` (e.g. SHARE on avatars: inserts there wait).
 */
export async function holdDatabaseLock (srv: TestServer, postgres: { table: string, mode: string }): Promise<{ release: () => Promise<void> }> {
  const url = srv.sharedEnv.DATABASE_URL
  if (url === undefined) {
    const db = new SQLite(path.join(srv.dataDir, 'agentry.db'))
    db.exec('BEGIN IMMEDIATE')
    return { release: async () => { db.exec('ROLLBACK'); db.close() } }
  }
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  await client.query('BEGIN')
  await client.query(`LOCK TABLE ${postgres.table} IN ${postgres.mode} MODE`)
  return { release: async () => { await client.query('ROLLBACK'); await client.end() } }
}

/**
 * PostgreSQL: waits until at least `count` of the service's statements (those whose text contains
 * `statement`, if given) wait in the database for a lock, as behind holdDatabaseLock's.
 */
export async function untilWaitingForLock (srv: TestServer, { count = 1, statement = '' }: { count?: number, statement?: string } = {}): Promise<void> {
  const url = srv.sharedEnv.DATABASE_URL
  if (url === undefined) throw new Error('untilWaitingForLock: PostgreSQL only')
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    await until(`${count} of the service's statements to wait for a lock`, async () => {
      const { rows } = await client.query<{ n: number }>(
        "select count(*)::int as n from pg_stat_activity where datname = current_database() and application_name = 'agentry' and wait_event_type = 'Lock' and strpos(query, $1) > 0",
        [statement])
      return (rows[0]?.n ?? 0) >= count ? true : undefined
    }, 5000, 10)
  } finally {
    await client.end()
  }
}

/**
 * Changes an agent's columns in the database itself, as an operator's hand-made fix would: not
 * through the service, so no version bump or updatedAt unless given. On SQLite through a connection
 * of its own, as an sqlite3 shell's would be (the server's own connection is the server's).
 */
export async function changeAgentByHand (srv: TestServer, id: string, changes: Record<string, string | number | null>): Promise<void> {
  const target = srv.services.config.database
  if (target.kind === 'postgres') {
    await srv.services.database.db.updateTable('agents').set(changes).where('id', '=', id).execute()
    return
  }
  const columns = Object.keys(changes)
  const other = new SQLite(target.file)
  try {
    other.prepare(`update agents set ${columns.map((c) => `${c} = ?`).join(', ')} where id = ?`).run(...columns.map((c) => changes[c]), id)
  } finally {
    other.close()
  }
}

/** Renames an agent in the database itself (changeAgentByHand). */
export async function renameAgentByHand (srv: TestServer, id: string, name: string): Promise<void> {
  await changeAgentByHand(srv, id, { name })
}
