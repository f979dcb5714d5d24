import autocannon from 'autocannon'
import http from 'node:http'
import { cpuDelta, readCpuByName, readCpuSeconds, readMachineBusySeconds, sampleMemory, type MemPeak } from './procs.js'

export interface LatencyStats {
  /** Milliseconds, from every response's own timing (autocannon's histogram has 1 ms steps). */
  p50: number
  p90: number
  p99: number
  max: number
  mean: number
}

export interface LoadResult {
  requests: number
  seconds: number
  rps: number
  latency: LatencyStats
  errors: number
  timeouts: number
  non2xx: number
  /** Requests per status code, e.g. {"200": 51234}. */
  statusCodes: Record<string, number>
  /** Memory of the process under test during the measured run (not the warm-up). */
  mem: MemPeak | undefined
  /**
   * CPU used during the measured run, in cores (1 = one core busy all along): by the process under
   * test (all its threads) and by the bench process itself (autocannon, the load generator).
   */
  cpu: {
    server: number | undefined
    loadGenerator: number
    serverUsPerRequest: number | undefined
    /** The database server's processes (PostgreSQL), when the spec names them. */
    database: number | undefined
    /** Everything else on the machine (other processes, kernel work for them): noise when above ~0.15. */
    others: number | undefined
  }
  /** Errors and non-2xx answers during the warm-up, which must be zero too. */
  warmupErrors: number
  warmupNon2xx: number
}

export interface LoadSpec {
  url: string
  method?: 'GET' | 'POST' | 'PUT'
  headers?: Record<string, string>
  body?: string
  /**
   * Called for each request; returns the request to send (path, body...). `context` is the
   * connection's, fresh for each request, and the same object onResponse gets for its answer.
   */
  setupRequest?: (req: autocannon.Request, context: Record<string, unknown>) => autocannon.Request
  /** Called with each answer and the context its setupRequest saw. */
  onResponse?: (status: number, context: Record<string, unknown>) => void
  /**
   * Fixed requests each connection cycles through, built once: far cheaper for the load generator
   * than setupRequest, which rebuilds every request.
   */
  requests?: autocannon.Request[]
  connections: number
  seconds: number
  warmupSeconds: number
  /** The process whose memory is sampled during the measured run. */
  pid?: number
  /** Command name of a database server's processes (e.g. "postgres"), whose CPU is counted apart. */
  databaseProcess?: string
}

/** Exact percentiles of a sample (sorted copy). */
export function percentiles (values: ArrayLike<number>, count = values.length): LatencyStats {
  if (count === 0) return { p50: NaN, p90: NaN, p99: NaN, max: NaN, mean: NaN }
  const sorted = Float64Array.from({ length: count }, (_, i) => values[i] as number).sort()
  const at = (q: number) => sorted[Math.min(count - 1, Math.max(0, Math.ceil(q * count) - 1))] as number
  let sum = 0
  for (const v of sorted) sum += v
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99), max: sorted[count - 1] as number, mean: sum / count }
}

interface RawRun {
  result: autocannon.Result
  latencies: Float64Array
  count: number
}

const MAX_SAMPLES = 4_000_000

async function fire (spec: LoadSpec, seconds: number, record: boolean): Promise<RawRun> {
  let latencies = new Float64Array(record ? 65536 : 0)
  let count = 0
  const request: autocannon.Request = { method: spec.method ?? 'GET' }
  if (spec.body !== undefined) request.body = spec.body
  if (spec.setupRequest !== undefined) request.setupRequest = spec.setupRequest as (req: autocannon.Request, context: object) => autocannon.Request
  const onResponse = spec.onResponse
  if (onResponse !== undefined) request.onResponse = (status: number, _body: string, context: object) => { onResponse(status, context as Record<string, unknown>) }
  let settle: (r: autocannon.Result) => void = () => {}
  let fail: (e: unknown) => void = () => {}
  const done = new Promise<autocannon.Result>((resolve, reject) => { settle = resolve; fail = reject })
  // autocannon only looks at its clock every sampleInt ms (1 s by default), so short runs would
  // last whole seconds; 100 ms keeps them within 0.1 s of what was asked.
  const options: autocannon.Options = {
    url: spec.url,
    connections: spec.connections,
    pipelining: 1,
    duration: seconds,
    sampleInt: 100,
    timeout: 10,
    headers: spec.headers ?? {},
    requests: spec.requests ?? [request]
  }
  const instance = autocannon(options, (err: unknown, result: autocannon.Result) => {
    if (err !== null && err !== undefined) fail(err)
    else settle(result)
  })
  if (record) {
    instance.on('response', (_client, _status, _bytes, responseTime) => {
      if (count === latencies.length && count < MAX_SAMPLES) {
        const bigger = new Float64Array(Math.min(MAX_SAMPLES, latencies.length * 2))
        bigger.set(latencies)
        latencies = bigger
      }
      if (count < latencies.length) latencies[count++] = responseTime
    })
  }
  const result = await done
  return { result, latencies, count }
}

const non2xxOf = (r: autocannon.Result) => r['1xx'] + r['3xx'] + r['4xx'] + r['5xx']

/** A short warm-up (JIT, caches, connection setup), then the measured run. */
export async function runLoad (spec: LoadSpec): Promise<LoadResult> {
  let warmupErrors = 0
  let warmupNon2xx = 0
  if (spec.warmupSeconds > 0) {
    const warm = await fire(spec, spec.warmupSeconds, false)
    warmupErrors = warm.result.errors
    warmupNon2xx = non2xxOf(warm.result)
  }
  const mem = spec.pid === undefined ? undefined : sampleMemory(spec.pid)
  const cpu0 = spec.pid === undefined ? undefined : readCpuSeconds(spec.pid)
  const own0 = process.cpuUsage()
  const machine0 = readMachineBusySeconds()
  const db0 = spec.databaseProcess === undefined ? undefined : readCpuByName(spec.databaseProcess)
  const wall0 = performance.now()
  let run: RawRun
  try {
    run = await fire(spec, spec.seconds, true)
  } catch (err) {
    mem?.stop()
    throw err
  }
  const memPeak = mem?.stop()
  const wall = (performance.now() - wall0) / 1000
  const cpu1 = spec.pid === undefined ? undefined : readCpuSeconds(spec.pid)
  const own = process.cpuUsage(own0)
  const machine1 = readMachineBusySeconds()
  const dbSeconds = db0 === undefined || spec.databaseProcess === undefined ? undefined : cpuDelta(db0, readCpuByName(spec.databaseProcess))
  const serverSeconds = cpu0 === undefined || cpu1 === undefined ? undefined : cpu1 - cpu0
  const cpu = {
    server: serverSeconds === undefined ? undefined : serverSeconds / wall,
    loadGenerator: (own.user + own.system) / 1e6 / wall,
    serverUsPerRequest: serverSeconds === undefined || run.count === 0 ? undefined : serverSeconds * 1e6 / run.count,
    database: dbSeconds === undefined ? undefined : dbSeconds / wall,
    others: machine0 === undefined || machine1 === undefined
      ? undefined
      : Math.max(0, (machine1 - machine0 - (serverSeconds ?? 0) - (dbSeconds ?? 0)) / wall - (own.user + own.system) / 1e6 / wall)
  }
  const r = run.result
  const statusCodes: Record<string, number> = {}
  for (const [code, stats] of Object.entries(r.statusCodeStats ?? {})) statusCodes[code] = stats.count ?? 0
  const seconds = r.duration
  return {
    requests: run.count,
    seconds,
    rps: run.count / seconds,
    latency: percentiles(run.latencies, run.count),
    errors: r.errors,
    timeouts: r.timeouts,
    non2xx: non2xxOf(r),
    statusCodes,
    mem: memPeak,
    cpu,
    warmupErrors,
    warmupNon2xx
  }
}

/** One server of those timeByTurns asks by turns. */
export interface TurnTarget {
  /** The server's origin, e.g. http://127.0.0.1:3000 */
  url: string
  headers: Record<string, string>
  /** The path (and query) of its next request. */
  path: () => string
}

/**
 * GET requests to several servers by turns, one request in flight at a time, each server over one
 * kept-alive connection of its own: a request to each, then again, the order alternating from turn
 * to turn; `warmupSeconds` unrecorded, then `seconds` recorded. Each server's latencies (ms, from
 * the request's start to its last byte) meet the same moments of the host, so a spell of slower
 * work slows them alike: two servers compared this way are not judged on different minutes. A
 * non-2xx answer or a connection error throws.
 */
export async function timeByTurns (targets: readonly TurnTarget[], seconds: number, warmupSeconds: number): Promise<LatencyStats[]> {
  const agents = targets.map(() => new http.Agent({ keepAlive: true, maxSockets: 1 }))
  const once = (i: number) => new Promise<number>((resolve, reject) => {
    const target = targets[i] as TurnTarget
    const start = performance.now()
    const req = http.get(`${target.url}${target.path()}`, { agent: agents[i], headers: target.headers }, (res) => {
      res.on('data', () => {})
      res.on('error', reject)
      res.on('end', () => {
        const status = res.statusCode ?? 0
        if (status < 200 || status > 299) reject(new Error(`${target.url}: HTTP ${status}`))
        else resolve(performance.now() - start)
      })
    })
    req.on('error', reject)
    req.setTimeout(10_000, () => { req.destroy(new Error(`${target.url}: no answer in 10 s`)) })
  })
  const samples = targets.map(() => [] as number[])
  try {
    for (const [phase, length] of [['warm-up', warmupSeconds], ['measured', seconds]] as const) {
      const end = performance.now() + length * 1000
      for (let turn = 0; performance.now() < end; turn++) {
        for (let k = 0; k < targets.length; k++) {
          const i = turn % 2 === 0 ? k : targets.length - 1 - k
          const took = await once(i)
          if (phase === 'measured') samples[i]?.push(took)
        }
      }
    }
  } finally {
    for (const agent of agents) agent.destroy()
  }
  return samples.map((s) => percentiles(s))
}
