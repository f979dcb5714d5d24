/**
 * Agentry's benchmark suite: `npm run bench` (full, ~4 min; ~7 with PostgreSQL) or
 * `npm run bench -- --quick` (CI smoke, under a minute). BENCHMARKS.md describes the method.
 *
 * Starts the real service as a separate process (`node <its flags> bin/agentry.js serve`) on its embedded
 * defaults, and on PostgreSQL when BENCH_DATABASE_URL is set, plus a bare node:http server, a bare
 * Fastify and json-server for comparison, drives them with autocannon over loopback, samples the
 * servers' memory and CPU from /proc, and writes results (JSON, Markdown, SVG charts) to
 * bench/results/. Every process it starts is killed when it ends, however it ends.
 */
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type autocannon from 'autocannon'
import pg from 'pg'
import { encodeCursor } from '../src/agents/cursor.js'
import sharp from 'sharp'
import { processAvatar } from '../src/avatars/process.js'
import { createPgDatabase, openPostgres, openSqlite, seededId, sqliteFile, timeListQueries, timeListQueriesInDatabase, GET_BATCH_SQL, GET_SQL, LIST_SQL, PAGE_SQL, QUERY_ROUNDS, QUERY_ROUND_PAUSE_MS, type BenchDb, type Plans, type Position, type QueryRunner } from './lib/db.js'
import { writeBareServer, writeFastifyServer, type BareRoute } from './lib/bare.js'
import { makeJpegs, startFixtureServer, type FixtureServer } from './lib/images.js'
import { percentiles, runLoad, timeByTurns, type LatencyStats, type LoadResult, type LoadSpec } from './lib/load.js'
import { freePort, installCleanupHooks, killAllChildren, onInterrupt, readMachineBusySeconds, readMem, removeTempDirs, sampleMemory, sleep, spawnNode, tempDir, waitReady, wasInterrupted, type MemPeak, type Proc } from './lib/procs.js'
import { lineChart } from './lib/svg.js'
import { flameGraph } from './lib/flame.js'
import type { Profile } from './lib/cpuprofile.js'
import { binNodeFlags, CONFIG_VARS } from '../test/helpers/process.js'

const ROOT = fileURLToPath(new URL('../', import.meta.url))
const API = '/api/external/v1'

// ---------------------------------------------------------------------------------------------
// Options

const argv = process.argv.slice(2)
if (argv.includes('--help') || argv.includes('-h')) {
  process.stdout.write(`npm run bench [-- options]

  --quick         short runs, 1k and 10k agents only (CI smoke; well under a minute)
  --only=a,b      run only these parts: get, baselines, list, put, post, avatar, static, scaling, sharp
                  (baselines run right after get, on the SQLite leg)
  --cpu-prof      start the service with --cpu-prof; profiles go to <results>/profiles/<store>/,
                  each with a flame graph beside it (<profile>.flame.svg); summarise one by
                  function with: npx tsx bench/profile-summary.ts <file>
  --pin           servers on CPU 1, the bench and autocannon on CPU 0 (steadier figures and
                  cleaner profiles; sharp then has one core only)
  --update-doc    after a full run, replace the results section of BENCHMARKS.md
  --wait-idle     first wait (up to 10 min) until the rest of the machine is quiet

  BENCH_DATABASE_URL=postgres://user@127.0.0.1:5432/db   also run every scenario on PostgreSQL
                  (a fresh database is created from that admin URL and dropped afterwards)
  BENCH_NODE_FLAGS="--perf-basic-prof"   extra node flags for the service (profiling with perf)
`)
  process.exit(0)
}
const known = /^--(quick|cpu-prof|pin|update-doc|wait-idle|only=.+)$/
const unknown = argv.filter((a) => !known.test(a))
if (unknown.length > 0) {
  process.stderr.write(`bench: unknown option ${unknown.join(' ')} (see --help)\n`)
  process.exit(2)
}
const QUICK = argv.includes('--quick')
const CPU_PROF = argv.includes('--cpu-prof')
const UPDATE_DOC = argv.includes('--update-doc')
const PIN = argv.includes('--pin')
const WAIT_IDLE = argv.includes('--wait-idle')
/** With --pin: where the servers run; the bench pins itself to CPU 0 at start. */
const SERVER_CPUS = PIN ? { cpus: '1' } : {}
const PARTS = ['get', 'baselines', 'list', 'put', 'post', 'avatar', 'static', 'scaling', 'sharp']
const ONLY = argv.find((a) => a.startsWith('--only='))?.slice('--only='.length).split(',').map((s) => s.trim()).filter((s) => s !== '')
const badParts = ONLY?.filter((p) => !PARTS.includes(p)) ?? []
if (badParts.length > 0) {
  process.stderr.write(`bench: unknown part ${badParts.join(', ')}; parts are ${PARTS.join(', ')}\n`)
  process.exit(2)
}
const want = (part: string) => ONLY === undefined || ONLY.includes(part)
const PG_ADMIN_URL = process.env.BENCH_DATABASE_URL !== undefined && process.env.BENCH_DATABASE_URL !== '' ? process.env.BENCH_DATABASE_URL : undefined

const T = QUICK
  ? { seconds: 0.6, warmup: 0.15, scalingSeconds: 0.5, scalingWarmup: 0.1, besideSeconds: 0.5, sharpSeconds: 0.4, images: 400, sizes: [1_000, 10_000], listIterations: 50, turnSeconds: 0.4, turnWarmup: 0.1, turnRounds: 2 }
  : { seconds: 6, warmup: 1, scalingSeconds: 4, scalingWarmup: 0.5, besideSeconds: 3, sharpSeconds: 3, images: 1500, sizes: [1_000, 10_000, 100_000, 1_000_000], listIterations: 300, turnSeconds: 2, turnWarmup: 0.5, turnRounds: 6 }
const CONNECTIONS = 10
const SEED_AGENTS = 100
// Quick and partial (--only) runs keep their own folders, so they never overwrite a full run's figures.
const RESULTS_SUBDIR = QUICK ? 'quick' : ONLY !== undefined ? 'partial' : undefined
const RESULTS_DIR = path.join(ROOT, 'bench', 'results', ...(RESULTS_SUBDIR === undefined ? [] : [RESULTS_SUBDIR]))

// ---------------------------------------------------------------------------------------------
// Results

type Leg = 'sqlite' | 'postgres'

interface ScenarioRecord {
  leg: Leg | 'baseline'
  id: string
  title: string
  server: 'agentry' | 'bare node:http' | 'bare Fastify' | 'json-server'
  connections: number
  note?: string
  /** Avatar scenarios: mean ms per pipeline stage, from the service's own /metrics. */
  avatarStages?: Record<string, number>
  result: LoadResult
}

/** One round of GET /agents/:id by turns: the service, bare node:http and json-server, seconds apart. */
interface TurnRound {
  agentry: LoadResult
  bare: LoadResult
  jsonServer: LoadResult
  /**
   * A second bare node:http, the same program with the same bytes, on the service's other side in
   * the turns. The ceiling is the mean of the two; the second's ratio to the first (the control)
   * is what the host's noise alone does to a ratio measured this way.
   */
  bareAgain: LoadResult
}

interface ScalingRecord {
  leg: Leg
  agents: number
  seedSeconds: number
  getById: LoadResult
  /** GET /agents?limit=100 */
  firstPage: LoadResult
  /** GET /agents?limit=100&cursor=<the middle of the roster> */
  middlePage: LoadResult
  /** The same three over HTTP, each timed by turns with a service of the reference roster's size. */
  beside: HttpBeside
  /** LIST_SQL, timed on the database directly. */
  listQuery: LatencyStats
  /** PAGE_SQL after the middle of the roster, timed on the database directly. */
  pageQuery: LatencyStats
  /** The same two on the reference roster (T.sizes[0] agents, the reference service's database), timed in the same rounds. */
  listQueryRef: LatencyStats
  pageQueryRef: LatencyStats
  /**
   * PostgreSQL: the same two queries (and the reference's) as the database itself timed them
   * (EXPLAIN ANALYZE, same rounds), with the pages each touched: [this roster's, the reference's].
   */
  inDatabase?: { list: [InDatabaseStats, InDatabaseStats], page: [InDatabaseStats, InDatabaseStats] }
  plans: Plans
  /** GET /agents without limit: the whole roster, with GET /agents/:id asked meanwhile. */
  wholeList: WholeList
}

/** [this roster's p50s, the reference roster's], from requests by turns (timeByTurns). */
interface HttpBeside {
  getById: [LatencyStats, LatencyStats]
  firstPage: [LatencyStats, LatencyStats]
  middlePage: [LatencyStats, LatencyStats]
}

interface WholeList {
  bytes: number
  /** Agents in the answer (counted in the bytes as they came). */
  agents: number
  firstByteMs: number
  totalMs: number
  mem: MemPeak
  /** GET /agents/:id at 1 connection, one after the other, while the list was being sent. */
  meanwhile: LatencyStats & { count: number, maxMs: number }
}

interface TargetRecord {
  leg: Leg | 'all'
  target: string
  value: string
  pass: boolean
  detail?: string
}

const scenarios: ScenarioRecord[] = []
const scaling: ScalingRecord[] = []
/** GET /agents/:id by turns with the baselines, per leg (see getByTurns). */
const getTurns: Partial<Record<Leg, TurnRound[]>> = {}
const targets: TargetRecord[] = []
const problems: string[] = []
const notes: string[] = []
type SharpAlone = LatencyStats & { runs: number }
type InDatabaseStats = LatencyStats & { pages: number }
/** sharp alone, measured right before each leg's avatar scenarios (or once, with --only=sharp). */
const sharpAlone: Partial<Record<Leg | 'standalone', SharpAlone>> = {}
/** One disk flush (a new 8 KB file written and fdatasync'ed) in the service's DATA_DIR, p50 ms. */
const diskFlush: Partial<Record<Leg, number>> = {}
const legMemory: Partial<Record<Leg, { startMb: number, endMb: number, hwmMb: number }>> = {}

const fmt = (n: number, digits = 0) => Number.isFinite(n) ? n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits }) : 'n/a'
const ms = (n: number) => Number.isFinite(n) ? (n >= 10 ? n.toFixed(1) : n.toFixed(2)) : 'n/a'
const T0 = performance.now()
/** Progress lines carry the time since the start, so slow steps show. */
const log = (s: string) => { process.stdout.write(`${s.startsWith('\n') || s.startsWith('==') ? '' : `[${((performance.now() - T0) / 1000).toFixed(1).padStart(5)}s] `}${s}\n`) }

function loud (message: string): void {
  problems.push(message)
  process.stdout.write(`\n${'!'.repeat(100)}\n!!! ${message}\n${'!'.repeat(100)}\n\n`)
}

/** Errors, timeouts and non-2xx answers must all be zero: anything else is reported loudly. */
function checkClean (label: string, r: LoadResult): void {
  const bad: string[] = []
  if (r.errors > 0) bad.push(`${r.errors} connection errors (${r.timeouts} timeouts)`)
  if (r.non2xx > 0) bad.push(`${r.non2xx} non-2xx answers ${JSON.stringify(r.statusCodes)}`)
  if (r.warmupErrors > 0 || r.warmupNon2xx > 0) bad.push(`warm-up: ${r.warmupErrors} errors, ${r.warmupNon2xx} non-2xx`)
  if (r.requests === 0) bad.push('no request completed')
  if (bad.length > 0) loud(`${label}: ${bad.join('; ')}`)
}

function record (rec: ScenarioRecord): void {
  scenarios.push(rec)
  const r = rec.result
  const mem = (r.mem === undefined ? '' : `  peak RSS ${fmt(r.mem.peakRssMb)} MB`) +
    (r.cpu.server === undefined ? '' : `  CPU: server ${r.cpu.server.toFixed(2)} cores (${fmt(r.cpu.serverUsPerRequest ?? NaN)} µs/req), autocannon ${r.cpu.loadGenerator.toFixed(2)}`) +
    (r.cpu.database === undefined ? '' : `, PostgreSQL ${r.cpu.database.toFixed(2)}`) +
    (r.cpu.others === undefined ? '' : `, others ${r.cpu.others.toFixed(2)}${r.cpu.others > 0.15 ? ' (busy machine: figures are noisy)' : ''}`)
  log(`  ${rec.leg.padEnd(8)} ${`${rec.server === 'agentry' ? '' : `[${rec.server}] `}${rec.title}`.padEnd(52)} c=${String(rec.connections).padEnd(3)} ` +
    `${fmt(r.rps).padStart(8)} req/s  p50 ${ms(r.latency.p50).padStart(6)} ms  p99 ${ms(r.latency.p99).padStart(6)} ms  ` +
    `errors ${r.errors}  non-2xx ${r.non2xx}${mem}`)
  checkClean(`${rec.leg} ${rec.server} ${rec.title}`, r)
}

/**
 * runLoad, and with --wait-idle: first waits (a minute at most) for the rest of the machine to be
 * quiet, and runs once more when it got busy during the run anyway.
 */
async function measure (spec: Parameters<typeof runLoad>[0]): Promise<LoadResult> {
  for (let attempt = 0; ; attempt++) {
    if (WAIT_IDLE) await waitQuiet(60)
    const result = await runLoad(spec)
    const others = result.cpu.others ?? 0
    if (!WAIT_IDLE || attempt >= 1 || others <= 0.3) return result
    log(`  (${others.toFixed(2)} cores busy elsewhere during that run: once more)`)
  }
}

// ---------------------------------------------------------------------------------------------
// Processes

/**
 * The per-token rate limit (default 1,000 requests per 10 s) would answer nearly all of a load test
 * with 429. It is raised out of reach rather than turned off, so its cost is still measured.
 */
const RATE_LIMIT_MAX = '100000000'

function childEnv (env: Record<string, string>): NodeJS.ProcessEnv {
  const base: NodeJS.ProcessEnv = { ...process.env }
  for (const key of CONFIG_VARS) delete base[key]
  delete base.NODE_OPTIONS // tsx's loader has no business in the processes under test
  return { ...base, ...env }
}

interface Service {
  leg: Leg
  proc: Proc
  url: string
  token: string
  dataDir: string
  databaseUrl?: string
  stop: () => Promise<void>
}

async function startService (leg: Leg, extraEnv: Record<string, string> = {}): Promise<Service> {
  const dataDir = tempDir('agentry-bench-')
  const port = await freePort()
  const token = `bench-${randomBytes(16).toString('hex')}`
  const pgdb = leg === 'postgres' && PG_ADMIN_URL !== undefined ? await createPgDatabase(PG_ADMIN_URL) : undefined
  // On Ctrl-C too, the database goes (after the service is killed).
  const unregister = pgdb === undefined ? () => {} : onInterrupt(pgdb.drop)
  const env: Record<string, string> = {
    HOST: '127.0.0.1',
    PORT: String(port),
    DATA_DIR: dataDir,
    BOOTSTRAP_TOKEN: token,
    LOG_LEVEL: 'warn',
    AVATAR_ALLOW_PRIVATE_NETWORKS: 'true',
    RATE_LIMIT_MAX,
    ...extraEnv
  }
  if (pgdb !== undefined) env.DATABASE_URL = pgdb.url
  const nodeFlags = [
    // As bin/agentry.js's shebang runs it (`npx agentry serve`, `npm start`).
    ...binNodeFlags(),
    ...(CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${path.join(RESULTS_DIR, 'profiles', leg)}`] : []),
    // e.g. BENCH_NODE_FLAGS=--perf-basic-prof, to profile the service with Linux perf.
    ...(process.env.BENCH_NODE_FLAGS ?? '').split(' ').filter((f) => f !== '')
  ]
  let proc: Proc | undefined
  const cleanup = async () => {
    await proc?.stop()
    await pgdb?.drop()
    unregister()
    // The folder goes when the run ends (removeTempDirs), not now: on a disk mounted with online
    // discard (as on these VMs) deleting files makes every flush of the next ~10-30 s dearer (see
    // measureDiskFlush), and later scenarios would pay for this one's files.
  }
  try {
    proc = spawnNode(`agentry serve (${leg})`, ['bin/agentry.js', 'serve'], { cwd: ROOT, env: childEnv(env), port, nodeFlags, ...SERVER_CPUS })
    const url = proc.url
    // /healthz answers as soon as the server listens, and BOOTSTRAP_TOKEN exists before it does.
    await waitReady(proc, `${url}/healthz`)
    const res = await fetch(`${url}${API}/agents`, { headers: { authorization: `Bearer ${token}` } })
    await res.arrayBuffer()
    if (res.status !== 200) throw new Error(`the bootstrap token was not accepted (HTTP ${res.status})`)
    return { leg, proc, url, token, dataDir, ...(pgdb === undefined ? {} : { databaseUrl: pgdb.url }), stop: cleanup }
  } catch (err) {
    await cleanup().catch(() => {})
    throw err
  }
}

/** PostgreSQL's own processes work for the service: counted apart, not as noise. */
const databaseProcess = (leg: Leg) => (leg === 'postgres' ? { databaseProcess: 'postgres' } : {})

async function apiCall (svc: Service, method: string, p: string, body?: unknown): Promise<{ status: number, text: string, json: unknown, etag: string | null }> {
  const res = await fetch(`${svc.url}${API}${p}`, {
    method,
    headers: { authorization: `Bearer ${svc.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(15_000)
  })
  const text = await res.text()
  let json: unknown
  try { json = JSON.parse(text) } catch { json = undefined }
  return { status: res.status, text, json, etag: res.headers.get('etag') }
}

type StageTotals = Map<string, { sum: number, count: number }>

/** agentry_avatar_stage_duration_seconds sums and counts by stage, from /metrics. */
async function avatarStageTotals (svc: Service): Promise<StageTotals> {
  const text = await (await fetch(`${svc.url}/metrics`, { signal: AbortSignal.timeout(10_000) })).text()
  const totals: StageTotals = new Map()
  for (const m of text.matchAll(/^agentry_avatar_stage_duration_seconds_(sum|count)\{[^}]*stage="([^"]+)"[^}]*\} (\S+)$/gm)) {
    const t = totals.get(m[2] as string) ?? { sum: 0, count: 0 }
    if (m[1] === 'sum') t.sum = Number(m[3])
    else t.count = Number(m[3])
    totals.set(m[2] as string, t)
  }
  return totals
}

/** Mean ms per stage between two readings. */
function stageMeans (before: StageTotals, after: StageTotals): Record<string, number> {
  const out: Record<string, number> = {}
  for (const [stage, a] of after) {
    const b = before.get(stage) ?? { sum: 0, count: 0 }
    if (a.count > b.count) out[stage] = (a.sum - b.sum) * 1000 / (a.count - b.count)
  }
  return out
}

const stagesText = (stages: Record<string, number> | undefined) =>
  stages === undefined ? '' : Object.entries(stages).map(([k, v]) => `${k} ${ms(v)}`).join(', ')

interface AgentShape {
  id: string
  status: 'online' | 'offline'
  avatar: null | { url: Record<'120x120' | '520x400' | 'default', string> }
}

// ---------------------------------------------------------------------------------------------
// The main scenarios, on one leg

interface SeededRoster {
  ids: string[]
  /** Exact bodies (and ETags) of GET /agents/:id, by id, and of GET /agents. */
  getBodies: Map<string, BareRoute>
  listBody: string
  agents: AgentShape[]
  staticPath: string
}

async function seedRoster (svc: Service, fixture: FixtureServer): Promise<SeededRoster> {
  const ids: string[] = new Array<string>(SEED_AGENTS)
  let next = 0
  const worker = async () => {
    while (next < SEED_AGENTS) {
      const i = next++
      const res = await apiCall(svc, 'POST', '/agents', {
        serviceUserId: `seed-${i}`,
        name: `Seed Agent ${i}`,
        status: i % 2 === 0 ? 'online' : 'offline',
        avatar: `${fixture.url}/img/0.jpg`
      })
      if (res.status !== 200) throw new Error(`seeding agent ${i}: HTTP ${res.status} ${res.text}`)
      ids[i] = (res.json as { data: AgentShape }).data.id
    }
  }
  await Promise.all([worker(), worker(), worker(), worker()])
  const getBodies = new Map<string, BareRoute>()
  for (const id of ids) {
    const res = await apiCall(svc, 'GET', `/agents/${id}`)
    if (res.status !== 200) throw new Error(`GET /agents/${id}: HTTP ${res.status}`)
    getBodies.set(id, res.etag === null ? { body: res.text } : { body: res.text, etag: res.etag })
  }
  const list = await apiCall(svc, 'GET', '/agents')
  const agents = (list.json as { data: AgentShape[] }).data
  if (agents.length !== SEED_AGENTS) throw new Error(`GET /agents listed ${agents.length} agents, expected ${SEED_AGENTS}`)
  const small = agents[0]?.avatar?.url['120x120']
  if (small === undefined) throw new Error('the seeded agents have no avatar')
  // The URL names STATIC_BASE_URL's default host (localhost); the bench talks to 127.0.0.1.
  const staticPath = new URL(small).pathname
  return { ids, getBodies, listBody: list.text, agents, staticPath }
}

/**
 * GET /agents/:id on the service, on bare node:http twice (two processes, one on each side of the
 * service: their mean is the ceiling, the second's ratio to the first the control) and on
 * json-server, by turns: T.turnRounds rounds of T.turnSeconds each, the order reversed every other
 * round. This host's speed moves from minute to minute (bare node:http has made 38,000 and 57,000
 * req/s within the hour), so the whole runs, a minute or more apart, compare different hosts; each
 * round compares the four within seconds. The ratio targets are judged on the median of the
 * rounds' ratios.
 */
async function getByTurns (leg: Leg, specs: Record<keyof TurnRound, LoadSpec>): Promise<TurnRound[]> {
  const rounds: TurnRound[] = []
  // The service between the two bare servers, so that each of them has it for a neighbour as often
  // as the other (before it in one round, after it in the next): with the service first and its
  // control last, the control read a median 103-112% of the first bare server in four legs.
  const order: Array<keyof TurnRound> = ['bare', 'agentry', 'bareAgain', 'jsonServer']
  // Each server warmed first as the whole runs warm theirs: a process started for the turns (the
  // control, or every baseline on a leg without whole baseline runs) would otherwise meet the first
  // round with its code not yet optimised.
  for (const server of order) checkClean(`${leg} GET /agents/:id by turns, warm-up, ${server}`, await runLoad({ ...specs[server], seconds: T.warmup, warmupSeconds: T.warmup }))
  for (let r = 0; r < T.turnRounds; r++) {
    const results: Partial<TurnRound> = {}
    for (const server of r % 2 === 0 ? order : [...order].reverse()) {
      const result = await runLoad(specs[server])
      checkClean(`${leg} GET /agents/:id by turns, round ${r + 1}, ${server}`, result)
      results[server] = result
    }
    const round = results as TurnRound
    rounds.push(round)
    log(`  ${leg.padEnd(8)} GET /agents/:id by turns, round ${r + 1}: ${fmt(round.agentry.rps)} req/s; bare node:http ${fmt(round.bare.rps)} and ${fmt(round.bareAgain.rps)} ` +
      `(the second ${(100 * controlOf(round)).toFixed(0)}% of the first), json-server ${fmt(round.jsonServer.rps)}: ` +
      `${(100 * round.agentry.rps / ceilingOf(round)).toFixed(0)}% of bare, ${(round.agentry.rps / round.jsonServer.rps).toFixed(1)}x json-server`)
  }
  return rounds
}

async function runLeg (leg: Leg, fixture: FixtureServer, images: Buffer[]): Promise<void> {
  log(`\n== ${leg}: the service on ${leg === 'sqlite' ? 'its embedded defaults (SQLite file + local disk)' : 'PostgreSQL + local disk'}`)
  const svc = await startService(leg)
  const baselines: Proc[] = []
  try {
    const auth = { authorization: `Bearer ${svc.token}` }
    const json = { ...auth, 'content-type': 'application/json' }
    const started = performance.now()
    const roster = await seedRoster(svc, fixture)
    log(`  seeded ${SEED_AGENTS} agents, each with the same 400x400 JPEG avatar, in ${((performance.now() - started) / 1000).toFixed(1)} s`)
    const memStart = readMem(svc.proc.pid)
    const base = { url: svc.url, seconds: T.seconds, warmupSeconds: T.warmup, pid: svc.proc.pid, ...databaseProcess(leg) }
    const { ids } = roster
    const n = ids.length

    // Every connection cycles through all the agents, requests built once.
    const cycle = (prefix: string) => ids.map((id) => ({ method: 'GET' as const, path: `${prefix}/${id}` }))
    if (want('get')) {
      const result = await measure({ ...base, connections: CONNECTIONS, headers: auth, requests: cycle(`${API}/agents`) })
      record({ leg, id: 'get-by-id', title: 'GET /agents/:id', server: 'agentry', connections: CONNECTIONS, note: `round robin over ${n} agents, each with an avatar`, result })
    }

    // The GET ratios are judged by turns (getByTurns), on each leg; the whole runs of the
    // baselines, on the first leg only, are shown beside them.
    const wholeBaselines = leg === 'sqlite' && want('baselines')
    const turns = want('get') && want('baselines')
    if (wholeBaselines || turns) {
      // Same bytes, same paths, from memory: the ceiling of Node here.
      const dir = tempDir('agentry-bench-baselines-')
      const routes: Record<string, BareRoute> = { [`${API}/agents`]: { body: roster.listBody } }
      for (const [id, route] of roster.getBodies) routes[`${API}/agents/${id}`] = route
      fs.writeFileSync(path.join(dir, 'db.json'), JSON.stringify({ agents: roster.agents }))
      const barePort = await freePort()
      const bare = spawnNode('bare node:http', writeBareServer(dir, routes, barePort), { cwd: dir, env: childEnv({}), port: barePort, ...SERVER_CPUS })
      baselines.push(bare)
      const jsPort = await freePort()
      const jsonServer = spawnNode('json-server 0.17', [
        path.join(ROOT, 'node_modules', 'json-server', 'lib', 'cli', 'bin.js'),
        '--host', '127.0.0.1', '--port', String(jsPort), '--quiet', '--read-only', 'db.json'
      ], { cwd: dir, env: childEnv({}), port: jsPort, ...SERVER_CPUS })
      baselines.push(jsonServer)
      const bareAgainPort = await freePort()
      const bareAgain = turns ? spawnNode('bare node:http again', writeBareServer(dir, routes, bareAgainPort), { cwd: dir, env: childEnv({}), port: bareAgainPort, ...SERVER_CPUS }) : undefined
      if (bareAgain !== undefined) baselines.push(bareAgain)
      await waitReady(bare, `${bare.url}/healthz`)
      if (bareAgain !== undefined) await waitReady(bareAgain, `${bareAgain.url}/healthz`)
      await waitReady(jsonServer, `${jsonServer.url}/agents/${ids[0] ?? ''}`)
      const b = { seconds: T.seconds, warmupSeconds: T.warmup, connections: CONNECTIONS }
      if (wholeBaselines) {
        const fastifyPort = await freePort()
        const fastify = spawnNode('bare Fastify', writeFastifyServer(dir, routes, fastifyPort, ROOT), { cwd: dir, env: childEnv({}), port: fastifyPort, ...SERVER_CPUS })
        baselines.push(fastify)
        await waitReady(fastify, `${fastify.url}/healthz`)
        record({
          leg: 'baseline', id: 'get-by-id', title: 'GET /agents/:id', server: 'bare node:http', connections: CONNECTIONS, note: 'the same bytes (and ETag) from memory',
          result: await measure({ ...b, url: bare.url, pid: bare.pid, requests: cycle(`${API}/agents`) })
        })
        record({
          leg: 'baseline', id: 'get-by-id', title: 'GET /agents/:id', server: 'bare Fastify', connections: CONNECTIONS, note: 'the same bytes from memory through Fastify 5: no schema, hooks, database or logging',
          result: await measure({ ...b, url: fastify.url, pid: fastify.pid, requests: cycle(`${API}/agents`) })
        })
        record({
          leg: 'baseline', id: 'get-by-id', title: 'GET /agents/:id', server: 'json-server', connections: CONNECTIONS, note: 'the same agents from its db.json',
          result: await measure({ ...b, url: jsonServer.url, pid: jsonServer.pid, requests: cycle('/agents') })
        })
        record({
          leg: 'baseline', id: 'list', title: `GET /agents (${n} agents)`, server: 'bare node:http', connections: CONNECTIONS,
          result: await measure({ ...b, url: `${bare.url}${API}/agents`, pid: bare.pid })
        })
        record({
          leg: 'baseline', id: 'list', title: `GET /agents (${n} agents)`, server: 'json-server', connections: CONNECTIONS,
          result: await measure({ ...b, url: `${jsonServer.url}/agents`, pid: jsonServer.pid })
        })
      }
      if (bareAgain !== undefined) {
        const spec = { seconds: T.turnSeconds, warmupSeconds: T.turnWarmup, connections: CONNECTIONS }
        getTurns[leg] = await getByTurns(leg, {
          agentry: { ...spec, url: svc.url, pid: svc.proc.pid, headers: auth, requests: cycle(`${API}/agents`), ...databaseProcess(leg) },
          bare: { ...spec, url: bare.url, pid: bare.pid, requests: cycle(`${API}/agents`) },
          jsonServer: { ...spec, url: jsonServer.url, pid: jsonServer.pid, requests: cycle('/agents') },
          bareAgain: { ...spec, url: bareAgain.url, pid: bareAgain.pid, requests: cycle(`${API}/agents`) }
        })
      }
      for (const p of baselines.splice(0)) await p.stop()
      // Its folder goes when the run ends, like the service's (see startService).
    }

    if (want('list')) {
      const count = ((await apiCall(svc, 'GET', '/agents')).json as { data: unknown[] }).data.length
      if (count !== SEED_AGENTS) loud(`${leg}: the list scenario expected exactly ${SEED_AGENTS} agents, found ${count}`)
      record({
        leg, id: 'list', title: `GET /agents (${count} agents)`, server: 'agentry', connections: CONNECTIONS,
        note: `no limit or cursor, so the whole roster, as in the seed: exactly ${count} agents with avatars`,
        result: await measure({ ...base, url: `${svc.url}${API}/agents`, connections: CONNECTIONS, headers: auth })
      })
    }

    if (want('put')) {
      // Round robin over a set of agents, each request flipping that agent's status: every request
      // is a real write. An agent whose last request is still unanswered is skipped, so no two
      // requests for one agent are ever in flight, and the last status sent for an agent is the one
      // it must end with. The warm-up flips the other half of the agents, so that requests still in
      // flight when it stops never race the measured run's requests for the same agent.
      const state = new Map(roster.agents.map((a) => [a.id, a.status]))
      const inFlight = new Set<string>()
      const flipper = (set: string[]) => {
        let k = 0
        return {
          setupRequest: (req: autocannon.Request, context: Record<string, unknown>): autocannon.Request => {
            let id = set[k++ % set.length] as string
            while (inFlight.has(id)) id = set[k++ % set.length] as string
            inFlight.add(id)
            context.id = id
            const status = state.get(id) === 'online' ? 'offline' : 'online'
            state.set(id, status)
            return { ...req, method: 'PUT', path: `${API}/agents/${id}`, body: `{"status":"${status}"}` }
          },
          onResponse: (_status: number, context: Record<string, unknown>) => { inFlight.delete(context.id as string) }
        }
      }
      const half = Math.floor(n / 2)
      const put = { ...base, method: 'PUT' as const, connections: CONNECTIONS, headers: json, warmupSeconds: 0 }
      const warm = await measure({ ...put, seconds: T.warmup, ...flipper(ids.slice(half)) })
      if (warm.errors > 0 || warm.non2xx > 0) loud(`${leg}: PUT warm-up: ${warm.errors} errors, ${warm.non2xx} non-2xx`)
      await sleep(300)
      const result = await measure({ ...put, ...flipper(ids.slice(0, half)) })
      // Requests in flight when autocannon stopped still complete; then every agent must have the
      // status its last request asked for.
      await sleep(500)
      let wrong = 0
      for (const id of ids) {
        const res = await apiCall(svc, 'GET', `/agents/${id}`)
        if ((res.json as { data?: AgentShape } | undefined)?.data?.status !== state.get(id)) wrong++
      }
      if (wrong > 0) loud(`${leg}: after PUT, ${wrong} of ${n} agents do not have the status last written`)
      record({
        leg, id: 'put-status', title: 'PUT /agents/:id (status flip)', server: 'agentry', connections: CONNECTIONS,
        note: `alternating online/offline over ${half} agents, never two requests for one agent in flight (the warm-up over the other ${n - half}), every request a real write; final states verified (${n - wrong}/${n})`,
        result
      })
    }

    if (want('post')) {
      let k = 0
      const tag = randomBytes(3).toString('hex')
      record({
        leg, id: 'post', title: 'POST /agents (no avatar)', server: 'agentry', connections: CONNECTIONS, note: 'a new serviceUserId per request',
        result: await measure({
          ...base,
          method: 'POST',
          connections: CONNECTIONS,
          headers: json,
          setupRequest: (req) => ({ ...req, method: 'POST', path: `${API}/agents`, body: `{"serviceUserId":"post-${tag}-${k++}","name":"Bench Agent","status":"online"}` })
        })
      })
    }

    if (want('avatar')) {
      await settleDisk(svc)
      await runSharpAlone(images, leg)
      diskFlush[leg] = measureDiskFlush(svc.dataDir)
      let k = 0
      const tag = randomBytes(3).toString('hex')
      const post = (avatarUrl: () => string) => (req: autocannon.Request): autocannon.Request => ({
        ...req,
        method: 'POST',
        path: `${API}/agents`,
        body: JSON.stringify({ serviceUserId: `av-${tag}-${k++}`, name: 'Avatar Agent', avatar: avatarUrl() })
      })
      const avatarLoad = { ...base, method: 'POST' as const, headers: json }
      // The service times each stage itself (download, process, store); read around each run.
      const staged = async (rec: Omit<ScenarioRecord, 'result' | 'avatarStages'>, spec: Parameters<typeof runLoad>[0]) => {
        const before = await avatarStageTotals(svc)
        const result = await measure(spec)
        const avatarStages = stageMeans(before, await avatarStageTotals(svc))
        record({ ...rec, avatarStages, result })
        log(`           stages (service's own timing, mean ms, incl. warm-up): ${stagesText(avatarStages)}`)
      }
      await staged({
        leg, id: 'avatar-same', title: 'POST /agents + avatar (same JPEG)', server: 'agentry', connections: 1,
        note: '400x400 JPEG from a loopback server; files are content-addressed, so storing is a hit after the first'
      }, { ...avatarLoad, connections: 1, setupRequest: post(() => `${fixture.url}/img/0.jpg`) })
      // Image 0 is the one above; 1.. are all different. Before each run the pool grows to what
      // that run can use at the rate just seen (with room to spare), so no request repeats an image.
      let img = 1
      const distinct = () => `${fixture.url}/img/${img++}.jpg`
      const topUp = async (reqPerSecond: number) => {
        const want = img + Math.ceil(reqPerSecond * (T.warmup + T.seconds) * 1.5)
        if (want <= images.length) return
        const t0 = performance.now()
        const had = images.length
        await makeJpegs(want, images)
        log(`           made ${fmt(images.length - had)} more distinct JPEGs for the next run in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
      }
      const distinctNote = () => img - 1 < images.length
        ? `a different JPEG each request (${fmt(img - 1)} distinct so far), so every file is written`
        : `a different JPEG each request until the pool of ${fmt(images.length - 1)} ran out, then repeats`
      await topUp(scenarios.at(-1)?.result.rps ?? 0)
      await staged({ leg, id: 'avatar-distinct', title: 'POST /agents + avatar (distinct JPEGs)', server: 'agentry', connections: 1 },
        { ...avatarLoad, connections: 1, setupRequest: post(distinct) })
      const last1 = scenarios.at(-1)
      if (last1 !== undefined) last1.note = distinctNote()
      await topUp((last1?.result.rps ?? 0) * os.availableParallelism())
      await staged({ leg, id: 'avatar-distinct-c8', title: 'POST /agents + avatar (distinct JPEGs)', server: 'agentry', connections: 8 },
        { ...avatarLoad, connections: 8, setupRequest: post(distinct) })
      const last8 = scenarios.at(-1)
      if (last8 !== undefined) last8.note = distinctNote()
      if (img - 1 >= images.length) notes.push(`${leg}: the distinct-avatar runs used more requests than the ${fmt(images.length - 1)} distinct images made for them; later ones repeated (store hits)`)
    }

    if (want('static')) {
      record({
        leg, id: 'static-120', title: 'GET /static/120x120/... (avatar file)', server: 'agentry', connections: CONNECTIONS,
        note: 'path from a created agent\'s avatar.url["120x120"]',
        result: await measure({ ...base, url: `${svc.url}${roster.staticPath}`, connections: CONNECTIONS })
      })
    }

    const memEnd = readMem(svc.proc.pid)
    if (memStart !== undefined && memEnd !== undefined) {
      legMemory[leg] = { startMb: memStart.rssKb / 1024, endMb: memEnd.rssKb / 1024, hwmMb: memEnd.hwmKb / 1024 }
    }
  } finally {
    for (const p of baselines) await p.stop()
    await svc.stop()
  }
}

// ---------------------------------------------------------------------------------------------
// Latency against roster size

async function runScaling (leg: Leg): Promise<void> {
  log(`\n== ${leg}: GET /agents/:id latency and the list query against roster size (${T.sizes.map((s) => s.toLocaleString('en-US')).join(', ')} agents; read cache off)`)
  // The read cache off (SQLite has one): with it, a small roster is all in memory and a large one
  // mostly is not, so the curve would show the cache's hit rate rather than the database's lookups.
  const svc = await startService(leg, { AGENT_CACHE_ENTRIES: '0' })
  let db: BenchDb | undefined
  let ref: BenchDb | undefined
  let refSvc: Service | undefined
  try {
    db = leg === 'sqlite' ? openSqlite(sqliteFile(svc.dataDir)) : await openPostgres(svc.databaseUrl ?? '')
    // The smallest roster again, in a service and database of its own: each size is timed by turns
    // with it, over HTTP and on the database (timeByTurns, timeListQueries), so that a comparison of
    // sizes does not hang on the host's spells of slower work, which last seconds.
    const refSize = referenceSize()
    refSvc = await startService(leg, { AGENT_CACHE_ENTRIES: '0' })
    ref = leg === 'sqlite' ? openSqlite(sqliteFile(refSvc.dataDir)) : await openPostgres(refSvc.databaseUrl ?? '')
    await ref.seedTo(refSize)
    const refMiddle = await ref.positionOf(Math.ceil(refSize / 2))
    // Warmed as the measured service is by its runs at each size (JIT, caches), or it would lose
    // the first comparison by turns for want of it.
    const refAuth = { authorization: `Bearer ${refSvc.token}` }
    for (const p of [`${API}/agents/${seededId(1)}`, `${API}/agents?limit=100`, `${API}/agents?limit=100&cursor=${encodeCursor(refMiddle)}`]) {
      checkClean(`${leg} warm-up of the reference service`, await runLoad({ url: `${refSvc.url}${p}`, connections: 1, seconds: T.scalingSeconds, warmupSeconds: 0, headers: refAuth }))
    }
    const auth = { authorization: `Bearer ${svc.token}` }
    for (const size of T.sizes) {
      const seedSeconds = await db.seedTo(size)
      const count = await db.count()
      if (count !== size) loud(`${leg}: expected ${size} agents after seeding, found ${count}`)
      const probe = await apiCall(svc, 'GET', `/agents/${seededId(size)}`)
      if (probe.status !== 200) throw new Error(`${leg}: the service does not see seeded agent ${size}: HTTP ${probe.status} ${probe.text}`)
      const one = { url: svc.url, connections: 1, seconds: T.scalingSeconds, warmupSeconds: T.scalingWarmup, pid: svc.proc.pid, headers: auth, ...databaseProcess(leg) }
      const getById = await measure({
        ...one,
        setupRequest: (req) => ({ ...req, path: `${API}/agents/${seededId(1 + Math.floor(Math.random() * size))}` })
      })
      checkClean(`${leg} GET /agents/:id at ${size} agents`, getById)
      const firstPage = await measure({ ...one, url: `${svc.url}${API}/agents?limit=100` })
      checkClean(`${leg} GET /agents?limit=100 at ${size} agents`, firstPage)
      // The page after the agent in the middle of the list: what a client paging through half the roster asks.
      const middle = await db.positionOf(Math.ceil(size / 2))
      const middlePage = await measure({ ...one, url: `${svc.url}${API}/agents?limit=100&cursor=${encodeCursor(middle)}` })
      checkClean(`${leg} GET /agents?limit=100&cursor=(middle) at ${size} agents`, middlePage)
      const beside = await timeHttpBeside(svc, size, middle, refSvc, refMiddle)
      const [listQuery, listQueryRef] = await timeBeside(db, undefined, ref, undefined, timeListQueries)
      const [pageQuery, pageQueryRef] = await timeBeside(db, middle, ref, refMiddle, timeListQueries)
      const inDatabase = db.dialect === 'postgres'
        ? { list: await timeBeside(db, undefined, ref, undefined, timeListQueriesInDatabase), page: await timeBeside(db, middle, ref, refMiddle, timeListQueriesInDatabase) }
        : undefined
      const plans = await db.plans(middle)
      const wholeList = await measureWholeList(svc, size)
      if (wholeList.agents !== size) loud(`${leg}: GET /agents gave ${fmt(wholeList.agents)} agents, not all ${fmt(size)}`)
      scaling.push({ leg, agents: size, seedSeconds, getById, firstPage, middlePage, beside, listQuery, pageQuery, listQueryRef, pageQueryRef, ...(inDatabase === undefined ? {} : { inDatabase }), plans, wholeList })
      log(`  ${leg.padEnd(8)} ${size.toLocaleString('en-US').padStart(9)} agents (seeded in ${seedSeconds.toFixed(1)} s), p50/p99 ms at 1 connection:` +
        ` GET /agents/:id ${ms(getById.latency.p50)}/${ms(getById.latency.p99)};` +
        ` ?limit=100 ${ms(firstPage.latency.p50)}/${ms(firstPage.latency.p99)};` +
        ` ?limit=100&cursor=middle ${ms(middlePage.latency.p50)}/${ms(middlePage.latency.p99)};` +
        ` by turns with ${refSize.toLocaleString('en-US')} agents, p50s: ${[beside.getById, beside.firstPage, beside.middlePage].map(([m, r]) => `${ms(m.p50)} (${ms(r.p50)})`).join(', ')};` +
        ` queries alone: first 100 ${ms(listQuery.p50)}, after the middle ${ms(pageQuery.p50)}` +
        ` (${refSize.toLocaleString('en-US')} agents, same rounds: ${ms(listQueryRef.p50)}, ${ms(pageQueryRef.p50)});` +
        (inDatabase === undefined ? '' : ` in the database: ${inDatabaseText(inDatabase.list)}, ${inDatabaseText(inDatabase.page)};`) +
        ` whole list ${fmt(wholeList.bytes / 1e6, 1)} MB, first byte ${ms(wholeList.firstByteMs)} ms, all in ${fmt(wholeList.totalMs / 1000, 2)} s,` +
        ` peak RSS ${fmt(wholeList.mem.peakRssMb)} MB, GET /agents/:id meanwhile p50/max ${ms(wholeList.meanwhile.p50)}/${ms(wholeList.meanwhile.maxMs)} ms (${fmt(wholeList.meanwhile.count)})`)
    }
    const last = scaling.filter((s) => s.leg === leg).at(-1)
    if (last !== undefined) {
      log(`  query plans at ${last.agents.toLocaleString('en-US')} agents:`)
      log(`    ${LIST_SQL}\n${last.plans.list.map((l) => `      ${l}`).join('\n')}`)
      log(`    ${PAGE_SQL}\n${last.plans.page.map((l) => `      ${l}`).join('\n')}`)
      log(`    ${leg === 'postgres' ? GET_BATCH_SQL : GET_SQL}\n${last.plans.get.map((l) => `      ${l}`).join('\n')}`)
    }
  } finally {
    await ref?.close()
    await db?.close()
    await refSvc?.stop()
    await svc.stop()
  }
}

/** Agents in the reference roster: the smallest size measured. */
const referenceSize = (): number => T.sizes[0] ?? 1000

/**
 * GET /agents/:id (a random agent), the first page and the page after the middle, each timed by
 * turns on `svc` (`size` agents) and on the reference service: p50s in the same seconds.
 */
async function timeHttpBeside (svc: Service, size: number, middle: Position, refSvc: Service, refMiddle: Position): Promise<HttpBeside> {
  const refSize = referenceSize()
  const pair = async (mine: () => string, theirs: () => string): Promise<[LatencyStats, LatencyStats]> => {
    const [a, b] = await timeByTurns([
      { url: svc.url, headers: { authorization: `Bearer ${svc.token}` }, path: mine },
      { url: refSvc.url, headers: { authorization: `Bearer ${refSvc.token}` }, path: theirs }
    ], T.besideSeconds, T.scalingWarmup)
    return [a as LatencyStats, b as LatencyStats]
  }
  const randomAgent = (n: number) => () => `${API}/agents/${seededId(1 + Math.floor(Math.random() * n))}`
  const getById = await pair(randomAgent(size), randomAgent(refSize))
  const firstPage = await pair(() => `${API}/agents?limit=100`, () => `${API}/agents?limit=100`)
  const middlePage = await pair(() => `${API}/agents?limit=100&cursor=${encodeCursor(middle)}`, () => `${API}/agents?limit=100&cursor=${encodeCursor(refMiddle)}`)
  return { getById, firstPage, middlePage }
}

/**
 * A list query on `db` and the same on the reference roster, timed in the same rounds: [db's,
 * ref's]; `timing` is timeListQueries (from a client) or timeListQueriesInDatabase (PostgreSQL).
 */
async function timeBeside<S extends LatencyStats> (db: BenchDb, after: Position | undefined, ref: BenchDb, refAfter: Position | undefined,
  timing: (iterations: number, runners: QueryRunner[]) => Promise<S[]>): Promise<[S, S]> {
  const runners = [await db.listQueryRunner(after), await ref.listQueryRunner(refAfter)]
  try {
    const [mine, theirs] = await timing(T.listIterations, runners)
    return [mine as S, theirs as S]
  } finally {
    for (const r of runners) await r.close()
  }
}

/** "0.049 ms, 9 pages (0.051, 10)": a query in the database, the reference's in brackets. */
const inDatabaseText = ([mine, ref]: readonly [InDatabaseStats, InDatabaseStats]): string =>
  `${ms3(mine.p50)} ms, ${fmt(mine.pages)} pages (${ms3(ref.p50)}, ${fmt(ref.pages)})`
/** Three decimals: a query inside the database takes tens of microseconds. */
const ms3 = (n: number) => Number.isFinite(n) ? n.toFixed(3) : 'n/a'

/**
 * GET /agents without limit or cursor (the seed's whole list) on a roster of `size` agents, read as it
 * arrives, with the service's memory sampled and GET /agents/:id asked at 1 connection meanwhile: how
 * long the list takes, what it costs in memory, and whether the service still answers others.
 */
async function measureWholeList (svc: Service, size: number): Promise<WholeList> {
  const auth = { authorization: `Bearer ${svc.token}` }
  const mem = sampleMemory(svc.proc.pid)
  const probes: number[] = []
  let listing = true
  const prober = (async () => {
    while (listing) {
      const t = performance.now()
      const res = await fetch(`${svc.url}${API}/agents/${seededId(1 + Math.floor(Math.random() * size))}`, { headers: auth })
      await res.arrayBuffer()
      if (res.status !== 200) throw new Error(`GET /agents/:id during the whole list: HTTP ${res.status}`)
      probes.push(performance.now() - t)
    }
  })()
  const start = performance.now()
  let firstByteMs = NaN
  let bytes = 0
  let agents = 0
  try {
    const res = await fetch(`${svc.url}${API}/agents`, { headers: auth, signal: AbortSignal.timeout(300_000) })
    if (res.status !== 200 || res.body === null) throw new Error(`GET /agents (whole list): HTTP ${res.status}`)
    // Agents are counted by a key each has once, across chunk boundaries (the avatar has none of its own).
    const key = Buffer.from('"serviceUserId":')
    let tail = Buffer.alloc(0)
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      if (bytes === 0) firstByteMs = performance.now() - start
      bytes += chunk.length
      const text = Buffer.concat([tail, chunk])
      for (let i = text.indexOf(key); i !== -1; i = text.indexOf(key, i + key.length)) agents++
      tail = text.subarray(Math.max(0, text.length - key.length + 1))
    }
  } finally {
    listing = false
    await prober.catch((err: unknown) => { loud(`${svc.leg}: ${String(err)}`) })
  }
  const totalMs = performance.now() - start
  const stats = percentiles(probes)
  return { bytes, agents, firstByteMs, totalMs, mem: mem.stop(), meanwhile: { ...stats, count: probes.length, maxMs: Math.max(0, ...probes) } }
}

// ---------------------------------------------------------------------------------------------
// sharp alone, in-process: the floor for avatar ingest

/**
 * processAvatar() in the bench process, one at a time, on fresh copies of the 400x400 JPEGs, with
 * libvips' operation cache off as the service runs it. Measured next to the avatar scenarios (the
 * service idle meanwhile), so both see the machine in the same state.
 */
async function runSharpAlone (images: Buffer[], key: Leg | 'standalone'): Promise<SharpAlone> {
  sharp.cache(false)
  const limits = { maxPixels: 40_000_000, maxFrames: 1000 }
  const image = (i: number) => Buffer.from(images[i % Math.min(images.length, 50)] as Buffer)
  for (let i = 0; i < 10; i++) await processAvatar(image(i), limits)
  const times: number[] = []
  const deadline = performance.now() + T.sharpSeconds * 1000
  while (performance.now() < deadline && times.length < 100_000) {
    const bytes = image(times.length)
    const t = performance.now()
    await processAvatar(bytes, limits)
    times.push(performance.now() - t)
  }
  const result = { ...percentiles(times), runs: times.length }
  sharpAlone[key] = result
  log(`  sharp alone, in-process: processAvatar() on a 400x400 JPEG (decode, auto-orient, re-encode, 120x120 cover, 520x400 inside), one at a time: ` +
    `${times.length} runs, p50 ${ms(result.p50)} ms, p99 ${ms(result.p99)} ms`)
  return result
}

/**
 * Lets the disk go quiet before the avatar scenarios, whose every new image waits for flushes: what
 * earlier scenarios (and the other store's leg) wrote is still being written back by the kernel,
 * and PostgreSQL's checkpointer would write the pages they dirtied in the middle of the run. Both
 * are the benchmark's own leftovers, not part of an ingest: PostgreSQL is checkpointed and
 * everything is synced first.
 */
async function settleDisk (svc: Service): Promise<void> {
  const t = performance.now()
  if (svc.databaseUrl !== undefined) {
    const client = new pg.Client({ connectionString: svc.databaseUrl, application_name: 'agentry-bench' })
    await client.connect()
    try {
      await client.query('checkpoint')
    } finally {
      await client.end()
    }
  }
  execFileSync('sync')
  log(`  disk settled before the avatar scenarios (${svc.databaseUrl === undefined ? '' : 'PostgreSQL CHECKPOINT, '}sync): ${((performance.now() - t) / 1000).toFixed(1)} s`)
}

/**
 * What one disk flush costs on the disk the service writes to: a new 8 KB file written,
 * fdatasync'ed and closed, 200 times. A new avatar cannot be acknowledged before its files and
 * then its row are flushed, so this bounds how close an ingest can come to sharp alone.
 */
function measureDiskFlush (dir: string): number {
  // Left in place (DATA_DIR goes when the run ends): deleting them would make the flushes of the
  // avatar scenarios that follow dearer. On these VMs (ext4 mounted with `discard`) a flush while
  // files are being deleted rose from ~0.22 ms to ~1 ms within 25 s, and came back ~10 s after the
  // deleting stopped.
  const folder = fs.mkdtempSync(path.join(dir, '.flush-'))
  const data = randomBytes(8192)
  const times: number[] = []
  for (let i = 0; i < 200; i++) {
    const t = performance.now()
    const fd = fs.openSync(path.join(folder, String(i)), 'wx')
    fs.writeSync(fd, data)
    fs.fdatasyncSync(fd)
    fs.closeSync(fd)
    times.push(performance.now() - t)
  }
  const p50 = percentiles(times).p50
  log(`  one disk flush in DATA_DIR (new 8 KB file written + fdatasync, 200 times): p50 ${ms(p50)} ms`)
  return p50
}

// ---------------------------------------------------------------------------------------------
// Targets

function find (leg: ScenarioRecord['leg'], id: string, server: ScenarioRecord['server'] = 'agentry', connections?: number): ScenarioRecord | undefined {
  return scenarios.find((s) => s.leg === leg && s.id === id && s.server === server && (connections === undefined || s.connections === connections))
}

/** The ceiling of a round by turns: the mean of its two bare node:http runs. */
const ceilingOf = (r: TurnRound): number => (r.bare.rps + r.bareAgain.rps) / 2
/** The control of a round by turns: its second bare node:http run against the first. */
const controlOf = (r: TurnRound): number => r.bareAgain.rps / r.bare.rps

function medianOf (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid] as number : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2
}

/** Flat: the largest roster's figure within 1.5x of the smallest's, or within 0.1 ms of it (timer noise). */
const isFlat = (small: number, large: number) => large <= small * 1.5 || large - small <= 0.1
/**
 * A query's own time in the database: within 1.5x, or within 50 µs. It takes ~30 µs here, and its
 * p50 still moved by 20 µs between two sizes whose plans touched the same pages.
 */
const isFlatInDatabase = (small: number, large: number) => large <= small * 1.5 || large - small <= 0.05
/** Pages a query touched: within 1.5x, or two more (a B-tree one or two levels deeper). */
const pagesFlat = (small: number, large: number) => large <= small * 1.5 || large - small <= 2

function evaluateTargets (legs: Leg[]): void {
  const bare = find('baseline', 'get-by-id', 'bare node:http')
  const jsonServer = find('baseline', 'get-by-id', 'json-server')
  for (const leg of legs) {
    const get = find(leg, 'get-by-id')
    const fastify = find('baseline', 'get-by-id', 'bare Fastify')
    if (get !== undefined && bare !== undefined && fastify !== undefined && leg === legs[0]) {
      notes.push(`for scale: bare Fastify answers GET /agents/:id at ${fmt(fastify.result.rps)} req/s, ${(100 * fastify.result.rps / bare.result.rps).toFixed(0)}% of bare node:http (${fmt(fastify.result.cpu.serverUsPerRequest ?? NaN)} vs ${fmt(bare.result.cpu.serverUsPerRequest ?? NaN)} µs CPU per request)`)
    }
    const rounds = getTurns[leg]
    // Judged by turns (see getByTurns); the whole runs, minutes apart, are shown beside.
    const judge = (target: string, baseline: 'bare' | 'jsonServer', whole: ScenarioRecord | undefined, goal: number, show: (ratio: number) => string): void => {
      const apart = get === undefined || whole === undefined
        ? undefined
        : `whole runs minutes apart ${show(get.result.rps / whole.result.rps)} (${fmt(get.result.rps)} vs ${fmt(whole.result.rps)} req/s)`
      // The rounds run whenever both the service's GET and the baselines are measured.
      if (rounds === undefined || rounds.length === 0) return
      const ratios = rounds.map((r) => r.agentry.rps / (baseline === 'bare' ? ceilingOf(r) : r.jsonServer.rps))
      const median = medianOf(ratios)
      // Two identical servers by the same turns: how far noise alone moves such a ratio here.
      const control = rounds.map(controlOf)
      const pct = (r: number) => `${(r * 100).toFixed(0)}%`
      const noise = `control: the second bare node:http read ${pct(Math.min(...control))}-${pct(Math.max(...control))} of the first (median ${pct(medianOf(control))})`
      targets.push({
        leg,
        target,
        value: `${show(median)} by turns (median of ${ratios.length} rounds: ${ratios.map(show).join(', ')}; ${noise})${apart === undefined ? '' : `; ${apart}`}`,
        pass: median >= goal
      })
    }
    judge('GET /agents/:id >= 60% of bare node:http', 'bare', bare, 0.6, (r) => `${(r * 100).toFixed(0)}%`)
    judge('GET /agents/:id >= 10x json-server', 'jsonServer', jsonServer, 10, (r) => `${r.toFixed(1)}x`)
    const put = find(leg, 'put-status')
    if (put !== undefined && leg === 'sqlite') {
      targets.push({ leg, target: 'PUT status >= 3,000 req/s on SQLite', value: `${fmt(put.result.rps)} req/s`, pass: put.result.rps >= 3000 })
    }
    for (const id of ['avatar-same', 'avatar-distinct']) {
      const av = find(leg, id, 'agentry', 1)
      if (av === undefined) continue
      const which = id === 'avatar-same' ? 'same JPEG' : 'distinct JPEGs'
      targets.push({ leg, target: `avatar ingest p50 <= 30 ms (400x400 JPEG, 1 connection, ${which})`, value: `${ms(av.result.latency.p50)} ms`, pass: av.result.latency.p50 <= 30 })
      const floor = sharpAlone[leg] ?? sharpAlone.standalone
      if (floor !== undefined) {
        const ratio = av.result.latency.p50 / floor.p50
        const flush = diskFlush[leg] === undefined ? '' : `; one disk flush here: ${ms(diskFlush[leg])} ms`
        targets.push({ leg, target: `avatar ingest p50 <= 1.5x sharp alone (${which})`, value: `${ratioText(ratio, 1.5)}x (${ms(av.result.latency.p50)} vs ${ms(floor.p50)} ms${flush})`, pass: ratio <= 1.5 })
      }
    }
    const sizes = scaling.filter((s) => s.leg === leg)
    const small = sizes[0]
    const large = sizes.at(-1)
    if (small !== undefined && large !== undefined && large !== small) {
      const range = `${small.agents.toLocaleString('en-US')} -> ${large.agents.toLocaleString('en-US')} agents`
      // Judged on the requests by turns: the largest roster's against the reference's, in the same
      // seconds. The runs minutes apart (the curve) are shown beside.
      const apart = (http: (r: ScalingRecord) => LoadResult) => `runs minutes apart ${ms(http(small).latency.p50)} -> ${ms(http(large).latency.p50)} ms`
      const [getLarge, getRef] = large.beside.getById
      const a = getRef.p50
      const b = getLarge.p50
      targets.push({ leg, target: `GET /agents/:id latency flat, ${range}`, value: `p50 by turns ${ms(a)} -> ${ms(b)} ms (${(b / a).toFixed(2)}x); ${apart((r) => r.getById)}`, pass: isFlat(a, b), detail: 'flat: within 1.5x, or within 0.1 ms' })
      const sortsOrScans = (plan: string[]) => plan.some((l) => (leg === 'sqlite' ? /TEMP B-TREE|^SCAN agents\b/ : /\bSort\b|Seq Scan/).test(l))
      for (const page of [
        { label: 'list page (?limit=100)', http: (r: ScalingRecord) => r.firstPage, beside: (r: ScalingRecord) => r.beside.firstPage, query: (r: ScalingRecord) => r.listQuery, ref: (r: ScalingRecord) => r.listQueryRef, inDatabase: (r: ScalingRecord) => r.inDatabase?.list, plan: (r: ScalingRecord) => r.plans.list },
        { label: 'list page after a cursor in the middle (?limit=100&cursor=...)', http: (r: ScalingRecord) => r.middlePage, beside: (r: ScalingRecord) => r.beside.middlePage, query: (r: ScalingRecord) => r.pageQuery, ref: (r: ScalingRecord) => r.pageQueryRef, inDatabase: (r: ScalingRecord) => r.inDatabase?.page, plan: (r: ScalingRecord) => r.plans.page }
      ]) {
        const [httpLarge, httpRef] = page.beside(large)
        const ha = httpRef.p50
        const hb = httpLarge.p50
        // The query alone: the largest roster's against the smallest's, timed in the same rounds. On
        // SQLite that is the query itself (in-process). On PostgreSQL the time a client sees is
        // mostly the round trip and the parsing of the rows (~0.3 ms around a query of ~0.03 ms),
        // and its noise as large as the query: there the query is judged as the database timed it,
        // and by the pages it touched (a plan that grows with the roster reads more of them).
        const qa = page.ref(large).p50
        const qb = page.query(large).p50
        const inDb = page.inDatabase(large)
        const queryGrows = inDb === undefined
          ? !isFlat(qa, qb)
          : !isFlatInDatabase(inDb[1].p50, inDb[0].p50) || !pagesFlat(inDb[1].pages, inDb[0].pages)
        const badPlan = sortsOrScans(page.plan(large))
        const why = [
          isFlat(ha, hb) ? '' : 'HTTP latency grows',
          queryGrows ? `the query alone grows${inDb === undefined ? '' : ' in the database'}` : '',
          badPlan ? 'the plan sorts or scans the whole table' : ''
        ].filter((w) => w !== '').join('; ')
        const inDbText = inDb === undefined
          ? ''
          : `; in the database (EXPLAIN ANALYZE, same rounds), p50 ${ms3(inDb[1].p50)} -> ${ms3(inDb[0].p50)} ms (${(inDb[0].p50 / inDb[1].p50).toFixed(2)}x), ${fmt(inDb[1].pages)} -> ${fmt(inDb[0].pages)} pages`
        targets.push({
          leg,
          target: `${page.label} flat, ${range}`,
          value: `HTTP p50 by turns ${ms(ha)} -> ${ms(hb)} ms (${(hb / ha).toFixed(2)}x), ${apart(page.http)}; query alone, timed side by side, p50 ${ms(qa)} -> ${ms(qb)} ms (${(qb / qa).toFixed(2)}x)${inDbText}; plan: ${page.plan(large).join(' / ')}`,
          pass: why === '',
          ...(why === '' ? {} : { detail: why })
        })
      }
    }
    const loaded = scenarios.filter((s) => s.leg === leg && s.result.mem !== undefined)
    if (loaded.length > 0) {
      const worst = loaded.reduce((a, b) => ((a.result.mem?.peakRssMb ?? 0) >= (b.result.mem?.peakRssMb ?? 0) ? a : b))
      const peak = worst.result.mem?.peakRssMb ?? 0
      targets.push({ leg, target: 'peak RSS under load <= 200 MB', value: `${fmt(peak)} MB (during ${worst.title}, c=${worst.connections})`, pass: peak <= 200 })
    }
    const whole = scaling.filter((s) => s.leg === leg).at(-1)
    if (whole !== undefined) {
      const w = whole.wholeList
      targets.push({
        leg,
        target: `peak RSS <= 200 MB while sending the whole list of ${whole.agents.toLocaleString('en-US')} agents (GET /agents, no limit)`,
        value: `${fmt(w.mem.peakRssMb)} MB (${fmt(w.bytes / 1e6, 1)} MB of JSON in ${fmt(w.totalMs / 1000, 2)} s; GET /agents/:id meanwhile: ${fmt(w.meanwhile.count)} answered, p50 ${ms(w.meanwhile.p50)} ms, slowest ${ms(w.meanwhile.maxMs)} ms)`,
        pass: w.mem.peakRssMb <= 200
      })
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Output

/** Cores the whole machine kept busy over `seconds`, before the bench starts anything. */
async function busyCores (seconds = 1): Promise<number | undefined> {
  const a = readMachineBusySeconds()
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000))
  const b = readMachineBusySeconds()
  return a === undefined || b === undefined ? undefined : (b - a) / seconds
}

const QUIET = 0.2

/** Waits, at most maxSeconds, until the machine is quiet; returns the last reading. */
async function waitQuiet (maxSeconds: number, say = false): Promise<number | undefined> {
  const deadline = Date.now() + maxSeconds * 1000
  let busy = await busyCores()
  while (busy !== undefined && busy > QUIET && Date.now() < deadline) {
    if (say) log(`waiting for a quiet machine: ${busy.toFixed(2)} cores busy elsewhere`)
    busy = await busyCores(say ? 5 : 1)
  }
  return busy
}

/** With --wait-idle: waits, at most 10 minutes, for the rest of the machine to go quiet. */
async function idleCheck (): Promise<number | undefined> {
  return WAIT_IDLE ? await waitQuiet(600, true) : await busyCores()
}

function machine () {
  const cpuinfo = fs.existsSync('/proc/cpuinfo') ? fs.readFileSync('/proc/cpuinfo', 'utf8') : ''
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? os.cpus()[0]?.model ?? 'unknown'
  let source = process.env.BENCH_SOURCE ?? 'unknown'
  try {
    const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim()
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src', 'package.json'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim() !== ''
    source = `${commit}${dirty ? ' (with uncommitted changes in src/ or package.json)' : ''}`
  } catch { /* not a git checkout: BENCH_SOURCE says what was measured */ }
  return {
    cpuModel: model,
    cores: os.availableParallelism(),
    memoryGb: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    kernel: `${os.type()} ${os.release()}`,
    source
  }
}

function table (header: string[], rows: string[][], align: Array<'l' | 'r'>): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const line = (cells: string[]) => cells.map((c, i) => (align[i] === 'r' ? c.padStart(widths[i] ?? 0) : c.padEnd(widths[i] ?? 0))).join('  ')
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n')
}

function mdTable (header: string[], rows: string[][], align: Array<'l' | 'r'>): string {
  const esc = (s: string) => s.replace(/\|/g, '\\|')
  return [
    `| ${header.map(esc).join(' | ')} |`,
    `| ${align.map((a) => (a === 'r' ? '---:' : '---')).join(' | ')} |`,
    ...rows.map((r) => `| ${r.map(esc).join(' | ')} |`)
  ].join('\n')
}

function scenarioRows (): { header: string[], rows: string[][], align: Array<'l' | 'r'> } {
  const bare = find('baseline', 'get-by-id', 'bare node:http')?.result.rps
  const jsonServer = find('baseline', 'get-by-id', 'json-server')?.result.rps
  const header = ['store', 'scenario', 'server', 'conns', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'non-2xx', 'peak RSS MB', 'server CPU µs/req', 'other load', 'x bare GET', 'x json-server GET']
  const align: Array<'l' | 'r'> = ['l', 'l', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r']
  const rows = scenarios.map((s) => [
    s.leg,
    s.title,
    s.server,
    String(s.connections),
    fmt(s.result.rps),
    ms(s.result.latency.p50),
    ms(s.result.latency.p99),
    String(s.result.errors),
    String(s.result.non2xx),
    s.result.mem === undefined ? '' : fmt(s.result.mem.peakRssMb),
    (s.result.cpu.serverUsPerRequest === undefined ? '' : fmt(s.result.cpu.serverUsPerRequest)) +
      (s.result.cpu.database === undefined || s.result.requests === 0 ? '' : ` (+${fmt(s.result.cpu.database * s.result.seconds * 1e6 / s.result.requests)} PostgreSQL)`),
    s.result.cpu.others === undefined ? '' : s.result.cpu.others.toFixed(2),
    bare === undefined ? 'n/a' : `${(s.result.rps / bare).toFixed(2)}`,
    jsonServer === undefined ? 'n/a' : `${(s.result.rps / jsonServer).toFixed(1)}`
  ])
  return { header, rows, align }
}

function scalingRows (): { header: string[], rows: string[][], align: Array<'l' | 'r'> } {
  return {
    header: ['store', 'agents', 'seeded in s', 'GET /:id p50', 'GET /:id p99', '?limit=100 p50', '?limit=100 p99', 'cursor=middle p50', 'cursor=middle p99',
      `query: first 100 p50 (${referenceSize().toLocaleString('en-US')} agents beside)`, `query: after middle p50 (${referenceSize().toLocaleString('en-US')} agents beside)`, 'service RSS MB'],
    align: ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
    rows: scaling.map((s) => [
      s.leg,
      s.agents.toLocaleString('en-US'),
      s.seedSeconds.toFixed(1),
      ms(s.getById.latency.p50),
      ms(s.getById.latency.p99),
      ms(s.firstPage.latency.p50),
      ms(s.firstPage.latency.p99),
      ms(s.middlePage.latency.p50),
      ms(s.middlePage.latency.p99),
      `${ms(s.listQuery.p50)} (${ms(s.listQueryRef.p50)})`,
      `${ms(s.pageQuery.p50)} (${ms(s.pageQueryRef.p50)})`,
      fmt(Math.max(s.getById.mem?.peakRssMb ?? 0, s.firstPage.mem?.peakRssMb ?? 0, s.middlePage.mem?.peakRssMb ?? 0))
    ])
  }
}

/** PostgreSQL's list queries as the database timed them (EXPLAIN ANALYZE), with the pages they touched. */
function inDatabaseRows (): { header: string[], rows: string[][], align: Array<'l' | 'r'> } {
  const ref = referenceSize().toLocaleString('en-US')
  const cell = (x: InDatabaseStats) => ms3(x.p50)
  return {
    header: ['store', 'agents', `first 100: ms p50 (${ref} agents beside)`, `pages (${ref} beside)`, `after middle: ms p50 (${ref} beside)`, `pages (${ref} beside)`],
    align: ['l', 'r', 'r', 'r', 'r', 'r'],
    rows: scaling.flatMap(({ leg, agents, inDatabase: d }) => d === undefined
      ? []
      : [[leg, agents.toLocaleString('en-US'), `${cell(d.list[0])} (${cell(d.list[1])})`, `${fmt(d.list[0].pages)} (${fmt(d.list[1].pages)})`, `${cell(d.page[0])} (${cell(d.page[1])})`, `${fmt(d.page[0].pages)} (${fmt(d.page[1].pages)})`]])
  }
}

function besideRows (): { header: string[], rows: string[][], align: Array<'l' | 'r'> } {
  const ref = referenceSize().toLocaleString('en-US')
  return {
    header: ['store', 'agents', `GET /:id p50 (${ref} agents by turns)`, `?limit=100 p50 (${ref} by turns)`, `cursor=middle p50 (${ref} by turns)`, 'GET /:id p99', '?limit=100 p99', 'cursor=middle p99'],
    align: ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
    rows: scaling.map(({ leg, agents, beside: b }) => [
      leg,
      agents.toLocaleString('en-US'),
      `${ms(b.getById[0].p50)} (${ms(b.getById[1].p50)})`,
      `${ms(b.firstPage[0].p50)} (${ms(b.firstPage[1].p50)})`,
      `${ms(b.middlePage[0].p50)} (${ms(b.middlePage[1].p50)})`,
      ms(b.getById[0].p99),
      ms(b.firstPage[0].p99),
      ms(b.middlePage[0].p99)
    ])
  }
}

function wholeListRows (): { header: string[], rows: string[][], align: Array<'l' | 'r'> } {
  return {
    header: ['store', 'agents', 'JSON MB', 'first byte ms', 'all in s', 'service peak RSS MB', 'GET /:id meanwhile', 'p50 ms', 'p99 ms', 'slowest ms'],
    align: ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
    rows: scaling.map(({ leg, agents, wholeList: w }) => [
      leg,
      agents.toLocaleString('en-US'),
      fmt(w.bytes / 1e6, 1),
      ms(w.firstByteMs),
      fmt(w.totalMs / 1000, 2),
      fmt(w.mem.peakRssMb),
      fmt(w.meanwhile.count),
      ms(w.meanwhile.p50),
      ms(w.meanwhile.p99),
      ms(w.meanwhile.maxMs)
    ])
  }
}

const COLORS: Record<Leg, string> = { sqlite: '#1f6feb', postgres: '#d9480f' }

function pagesChart (): string {
  const legs = [...new Set(scaling.map((s) => s.leg))]
  return lineChart({
    title: 'GET /agents?limit=100 latency (p50) against roster size',
    subtitle: `1 connection; first page, and the page after a cursor in the middle; ${QUICK ? 'quick run' : 'full run'}, ${new Date().toISOString().slice(0, 10)}`,
    xLabel: 'agents in the widget (log scale)',
    yLabel: 'latency (ms)',
    series: legs.flatMap((leg) => [
      { label: `${leg} first page`, color: COLORS[leg], points: scaling.filter((s) => s.leg === leg).map((s) => ({ x: s.agents, y: s.firstPage.latency.p50 })) },
      { label: `${leg} cursor=middle`, color: COLORS[leg], dash: '6 4', points: scaling.filter((s) => s.leg === leg).map((s) => ({ x: s.agents, y: s.middlePage.latency.p50 })) }
    ])
  })
}

function chart (): string {
  const colors = COLORS
  const legs = [...new Set(scaling.map((s) => s.leg))]
  return lineChart({
    title: 'GET /agents/:id latency against roster size',
    subtitle: `1 connection, random agent each request; ${QUICK ? 'quick run' : 'full run'}, ${new Date().toISOString().slice(0, 10)}`,
    xLabel: 'agents in the widget (log scale)',
    yLabel: 'latency (ms)',
    series: legs.flatMap((leg) => [
      { label: `${leg} p50`, color: colors[leg], points: scaling.filter((s) => s.leg === leg).map((s) => ({ x: s.agents, y: s.getById.latency.p50 })) },
      { label: `${leg} p99`, color: colors[leg], dash: '6 4', points: scaling.filter((s) => s.leg === leg).map((s) => ({ x: s.agents, y: s.getById.latency.p99 })) }
    ])
  })
}

function markdown (meta: ReturnType<typeof machine>, seconds: number, busyBefore: number | undefined): string {
  const s = scenarioRows()
  const sc = scalingRows()
  const out: string[] = []
  out.push(`Run of ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, ${QUICK ? '`--quick`' : 'full'} (${seconds.toFixed(0)} s in all). ` +
    `Machine: ${meta.cores} cores (${meta.cpuModel}), ${meta.memoryGb} GiB, Node ${meta.node}, ${meta.kernel}. Source measured: ${meta.source}.` +
    (busyBefore === undefined ? '' : ` Other work on the machine before the start: ${busyBefore.toFixed(2)} cores busy.`) +
    (PIN ? ' Pinned: servers on CPU 1, bench and autocannon on CPU 0.' : ''))
  out.push('', '### Throughput and latency', '',
    `Each scenario: ${T.warmup} s warm-up, then ${T.seconds} s measured; latencies are per response, not from autocannon's 1 ms histogram. ` +
    '"server CPU µs/req" is the CPU time (all threads, user + system) the server process used per answered request; ' +
    '"other load" is the CPU (in cores) used meanwhile by everything except the server and the bench, i.e. noise.', '', mdTable(s.header, s.rows, s.align))
  const withNotes = scenarios.filter((x) => x.note !== undefined)
  if (withNotes.length > 0) {
    out.push('', 'Notes:', '', ...withNotes.map((x) => `- ${x.leg}, ${x.server}, ${x.title}, c=${x.connections}: ${x.note ?? ''}` +
      (x.avatarStages === undefined ? '' : `; the service's own stage timings (mean ms): ${stagesText(x.avatarStages)}`)))
  }
  const turnLegs = Object.entries(getTurns).filter(([, rounds]) => rounds.length > 0)
  if (turnLegs.length > 0) {
    const rows: string[][] = []
    for (const [leg, rounds] of turnLegs) {
      rounds.forEach((r, i) => {
        rows.push([leg, String(i + 1), fmt(r.agentry.rps), fmt(r.bare.rps), `${fmt(r.bareAgain.rps)} (${(100 * controlOf(r)).toFixed(0)}%)`, fmt(r.jsonServer.rps),
          `${(100 * r.agentry.rps / ceilingOf(r)).toFixed(0)}%`, `${(r.agentry.rps / r.jsonServer.rps).toFixed(1)}x`,
          fmt(r.agentry.cpu.serverUsPerRequest ?? NaN), fmt(r.bare.cpu.serverUsPerRequest ?? NaN)])
      })
    }
    out.push('', '### GET /agents/:id by turns', '',
      `The GET ratio targets are judged here: ${T.turnRounds} rounds per store, each ${T.turnWarmup} s warm-up and ${T.turnSeconds} s measured on the service, on bare \`node:http\` and on json-server, ` +
      'one after the other, the order reversed every other round, at c=10 over the same 100 agents. This host\'s speed moves from minute to minute, so each round compares them all within seconds; ' +
      'the median of the rounds\' ratios is what the targets take. Bare `node:http` runs twice per round, as two processes of the same program with the same bytes, ' +
      'one on each side of the service: the ceiling is the mean of the two, and the second\'s ratio to the first (the control) is what noise alone does to a ratio measured this way.', '',
      mdTable(['store', 'round', 'agentry req/s', 'bare node:http req/s', 'bare again req/s (control)', 'json-server req/s', 'of bare (mean of both)', 'x json-server', 'agentry CPU µs/req', 'bare CPU µs/req'], rows, ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r']))
  }
  for (const [key, floor] of Object.entries(sharpAlone)) {
    out.push('', `sharp alone, in-process (\`processAvatar()\` on 400x400 JPEGs, one at a time, ${floor.runs} runs, measured ${key === 'standalone' ? 'on its own' : `just before the ${key} avatar scenarios`}): p50 ${ms(floor.p50)} ms, p99 ${ms(floor.p99)} ms.`)
  }
  if (scaling.length > 0) {
    out.push('', '### Against roster size', '',
      `A service with its read cache off (\`AGENT_CACHE_ENTRIES=0\`, and with it the JSON kept for lists and the whole lists kept), so that every GET and every list reads the database and every list makes its JSON: at 1 connection, ${T.scalingSeconds} s each: GET /agents/:id on a random seeded agent, GET /agents?limit=100 (first page) and ` +
      `GET /agents?limit=100&cursor=… (the page after the agent in the middle of the list). Latencies in ms. ` +
      `The queries alone were timed on the database directly, ${T.listIterations} times each, in ${QUERY_ROUNDS} rounds ${QUERY_ROUND_PAUSE_MS} ms apart; the round with the lowest p50 is shown (interference on a shared VM only adds). ` +
      `In each round the same queries ran by turns on the database of a second service holding ${referenceSize().toLocaleString('en-US')} agents (in brackets; the service is described below), so that the largest roster's queries are judged against the smallest's measured in the same seconds: this host's spells of slower queries last longer than a round.`, '', mdTable(sc.header, sc.rows, sc.align))
    const bt = besideRows()
    out.push('', `The same three requests again, each size by turns with a second service of its own holding ${referenceSize().toLocaleString('en-US')} agents (read cache off too): ` +
      `a request to one, then to the other, one at a time over a kept-alive connection each, for ${T.besideSeconds} s (after a ${T.scalingWarmup} s warm-up), so that both meet the same seconds of the host. ` +
      'The flatness targets are judged on these: the runs above are minutes apart, and a spell of slower work on this shared host, which lasts seconds, can fall on one size only. ' +
      'Latencies in ms, from a plain `node:http` client (not autocannon), with the reference service\'s p50 in brackets:', '', mdTable(bt.header, bt.rows, bt.align))
    const idb = inDatabaseRows()
    if (idb.rows.length > 0) {
      out.push('', 'On PostgreSQL a query timed from a client is mostly the round trip to the database and the parsing of its rows, and so is its noise. ' +
        'The same two list queries were also timed as the database itself runs them (`EXPLAIN (ANALYZE, BUFFERS, TIMING OFF)`: its Execution Time, in the same kind of rounds, ' +
        `by turns with the ${referenceSize().toLocaleString('en-US')}-agent database), with the most buffer pages each touched: a plan that grew with the roster would read more of them. ` +
        'The flatness targets judge PostgreSQL\'s query alone on these:', '', mdTable(idb.header, idb.rows, idb.align))
    }
    const wl = wholeListRows()
    out.push('', 'The whole list, `GET /agents` without `limit` or `cursor` (the seed\'s call), on the same rosters (seeded agents have no avatar: ' +
      '~190 bytes of JSON each), read as it arrived, with `GET /agents/:id` asked at 1 connection, one after the other, meanwhile:', '', mdTable(wl.header, wl.rows, wl.align))
    const dir = RESULTS_SUBDIR === undefined ? 'bench/results' : `bench/results/${RESULTS_SUBDIR}`
    out.push('', `![GET /agents/:id latency against roster size](${dir}/latency-vs-agents.svg)`, '', `![List page latency against roster size](${dir}/list-pages-vs-agents.svg)`)
    for (const leg of [...new Set(scaling.map((x) => x.leg))]) {
      const last = scaling.filter((x) => x.leg === leg).at(-1)
      if (last === undefined) continue
      out.push('', `Query plans on ${leg} at ${last.agents.toLocaleString('en-US')} agents:`, '', '```',
        LIST_SQL, ...last.plans.list.map((l) => `  ${l}`), '',
        PAGE_SQL, ...last.plans.page.map((l) => `  ${l}`), '',
        leg === 'postgres' ? GET_BATCH_SQL : GET_SQL, ...last.plans.get.map((l) => `  ${l}`), '```')
    }
  }
  if (targets.length > 0) {
    out.push('', '### Targets', '', mdTable(['', 'store', 'target', 'measured'], targets.map((t) => [t.pass ? 'PASS' : 'MISS', t.leg, t.target, t.value + (t.detail !== undefined && !t.pass ? ` (${t.detail})` : '')]), ['l', 'l', 'l', 'l']))
  }
  if (problems.length > 0) out.push('', '### Problems', '', ...problems.map((p) => `- ${p}`))
  if (notes.length > 0) out.push('', ...notes.map((n) => `- ${n}`))
  return out.join('\n') + '\n'
}

const DOC_START = '<!-- bench:results:start -->'
const DOC_END = '<!-- bench:results:end -->'

function updateDoc (md: string): void {
  const file = path.join(ROOT, 'BENCHMARKS.md')
  const doc = fs.readFileSync(file, 'utf8')
  const a = doc.indexOf(DOC_START)
  const b = doc.indexOf(DOC_END)
  if (a < 0 || b < a) throw new Error(`BENCHMARKS.md has no ${DOC_START} ... ${DOC_END} section`)
  fs.writeFileSync(file, `${doc.slice(0, a + DOC_START.length)}\n${md}${doc.slice(b)}`)
  log(`updated the results section of ${file}`)
}

// ---------------------------------------------------------------------------------------------

async function main (): Promise<number> {
  installCleanupHooks()
  const t0 = performance.now()
  const meta = machine()
  log(`Agentry benchmarks (${QUICK ? 'quick' : 'full'}): ${meta.cores} cores, ${meta.cpuModel}, Node ${meta.node}; source ${meta.source}`)
  log(`legs: sqlite${PG_ADMIN_URL === undefined ? ' (set BENCH_DATABASE_URL to add PostgreSQL)' : ' + postgres'}; all traffic on 127.0.0.1`)
  const busyBefore = await idleCheck()
  if (busyBefore !== undefined) {
    log(`machine busy before the start: ${busyBefore.toFixed(2)} cores${busyBefore > QUIET ? ' -- other work is running (tests? builds?): expect noisy figures; the "other load" column shows it per scenario' : ''}`)
  }
  execFileSync(process.execPath, ['scripts/ensure-build.mjs'], { cwd: ROOT, stdio: 'inherit' })
  if (PIN) {
    if (meta.cores < 2) throw new Error('--pin needs at least 2 CPUs')
    execFileSync('taskset', ['-a', '-p', '-c', '0', String(process.pid)], { stdio: 'ignore' })
    log('pinned: servers on CPU 1, the bench and autocannon on CPU 0')
  }
  fs.mkdirSync(RESULTS_DIR, { recursive: true })

  const imageCount = T.images
  const tImg = performance.now()
  const images = await makeJpegs(imageCount)
  log(`made ${imageCount} distinct 400x400 JPEGs (${fmt(images[0]?.length ?? 0)} bytes each) in ${((performance.now() - tImg) / 1000).toFixed(1)} s`)
  const fixture = await startFixtureServer(images)
  const legs: Leg[] = PG_ADMIN_URL === undefined ? ['sqlite'] : ['sqlite', 'postgres']
  try {
    if (want('sharp') && !want('avatar')) await runSharpAlone(images, 'standalone')
    for (const leg of legs) {
      if (['get', 'baselines', 'list', 'put', 'post', 'avatar', 'static'].some(want)) await runLeg(leg, fixture, images)
    }
    if (want('scaling')) for (const leg of legs) await runScaling(leg)
  } finally {
    await fixture.close()
  }

  evaluateTargets(legs)
  const seconds = (performance.now() - t0) / 1000

  const s = scenarioRows()
  log(`\n== Results (${QUICK ? 'quick' : 'full'} run, ${seconds.toFixed(0)} s)\n`)
  log(table(s.header, s.rows, s.align))
  if (scaling.length > 0) {
    const sc = scalingRows()
    log(`\n${table(sc.header, sc.rows, sc.align)}`)
    const bt = besideRows()
    log(`\nBy turns with a ${referenceSize().toLocaleString('en-US')}-agent service (its p50 in brackets):\n${table(bt.header, bt.rows, bt.align)}`)
    const idb = inDatabaseRows()
    if (idb.rows.length > 0) log(`\nList queries in the database (EXPLAIN ANALYZE), by turns with a ${referenceSize().toLocaleString('en-US')}-agent database (in brackets):\n${table(idb.header, idb.rows, idb.align)}`)
    const wl = wholeListRows()
    log(`\n${table(wl.header, wl.rows, wl.align)}`)
  }
  if (targets.length > 0) {
    log('\n== Targets\n')
    for (const t of targets) log(`  ${t.pass ? 'PASS' : 'MISS'}  ${t.leg.padEnd(8)} ${t.target}: ${t.value}${!t.pass && t.detail !== undefined ? ` (${t.detail})` : ''}`)
  }
  for (const n of notes) log(`note: ${n}`)

  const md = markdown(meta, seconds, busyBefore)
  const raw = {
    meta: { ...meta, mode: QUICK ? 'quick' : 'full', pinned: PIN, busyCoresBeforeStart: busyBefore ?? null, date: new Date().toISOString(), seconds, timings: T, connections: CONNECTIONS, only: ONLY ?? null },
    sharpAlone,
    scenarios,
    getTurns,
    scaling,
    legMemory,
    targets,
    problems,
    notes
  }
  fs.writeFileSync(path.join(RESULTS_DIR, 'latest.json'), `${JSON.stringify(raw, null, 2)}\n`)
  fs.writeFileSync(path.join(RESULTS_DIR, 'latest.md'), md)
  if (scaling.length > 0) {
    fs.writeFileSync(path.join(RESULTS_DIR, 'latency-vs-agents.svg'), chart())
    fs.writeFileSync(path.join(RESULTS_DIR, 'list-pages-vs-agents.svg'), pagesChart())
  }
  log(`\nwrote ${path.relative(ROOT, RESULTS_DIR)}/latest.json, latest.md${scaling.length > 0 ? ', latency-vs-agents.svg, list-pages-vs-agents.svg' : ''}`)
  if (CPU_PROF) writeFlameGraphs(Date.now() - seconds * 1000)
  if (UPDATE_DOC) {
    if (QUICK || ONLY !== undefined) log('not updating BENCHMARKS.md: --update-doc needs a full run of every part')
    else updateDoc(md)
  }

  if (problems.length > 0) {
    log(`\n${'!'.repeat(100)}\n!!! ${problems.length} problem(s): errors, non-2xx answers or failed checks. The figures above are not valid:`)
    for (const p of problems) log(`!!!   ${p}`)
    log('!'.repeat(100))
    return 1
  }
  return 0
}

/** A ratio to two decimals, or three when two would round it onto the limit it is checked against. */
function ratioText (ratio: number, limit: number): string {
  return ratio.toFixed(2) === limit.toFixed(2) && ratio !== limit ? ratio.toFixed(3) : ratio.toFixed(2)
}

/** With --cpu-prof: a flame graph (`<profile>.flame.svg`) beside each profile the services of this run wrote. */
function writeFlameGraphs (since: number): void {
  const what = ONLY === undefined ? 'every part' : `parts ${ONLY.join(', ')}`
  for (const leg of ['sqlite', 'postgres']) {
    const dir = path.join(RESULTS_DIR, 'profiles', leg)
    if (!fs.existsSync(dir)) continue
    for (const name of fs.readdirSync(dir).filter((n) => n.endsWith('.cpuprofile'))) {
      const file = path.join(dir, name)
      if (fs.statSync(file).mtimeMs < since) continue
      const profile = JSON.parse(fs.readFileSync(file, 'utf8')) as Profile
      const { svg } = flameGraph(profile, { title: `agentry serve on ${leg}, npm run bench (${what}${QUICK ? ', quick' : ''})`, subtitle: `${name}: the service's own samples, from start to stop` })
      const out = file.replace(/\.cpuprofile$/, '.flame.svg')
      fs.writeFileSync(out, svg)
      log(`flame graph: ${path.relative(ROOT, out)} (summary by function: npx tsx bench/profile-summary.ts ${path.relative(ROOT, file)})`)
    }
  }
}

main().then((code) => {
  killAllChildren()
  removeTempDirs()
  process.exitCode = code
}, (err: unknown) => {
  if (wasInterrupted()) return
  process.stderr.write(`\nbench failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
  killAllChildren()
  removeTempDirs()
  process.exitCode = 1
})
