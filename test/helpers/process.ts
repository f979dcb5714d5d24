import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { freePort, tempDir } from './server.js'
import { provisionStores } from './stores.js'

/** The repository root: `node bin/agentry.js` runs from here, as a user's `npx agentry` would. */
export const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const BIN = 'bin/agentry.js'

/** The node flags in bin/agentry.js's shebang (`#!/usr/bin/env -S node --flag ...`): how the service is meant to run. */
export function binNodeFlags (): string[] {
  const shebang = fs.readFileSync(path.join(ROOT, BIN), 'utf8').split('\n', 1)[0] ?? ''
  return shebang.split(/\s+/).filter((word) => word.startsWith('--'))
}

/**
 * Every variable the service reads, dropped from inherited environments so a developer's shell cannot
 * leak in: the names in src/config's schema, read from the source so new settings are covered too.
 */
export const CONFIG_VARS: readonly string[] = [...fs.readFileSync(path.join(ROOT, 'src/config/index.ts'), 'utf8')
  .matchAll(/^\s+([A-Z][A-Z0-9_]+): Type\./gm)].map((m) => m[1] as string)

/** The environment a spawned `agentry` sees: ours minus the service's settings, plus loopback, info logs and env. */
export function childEnv (env: Record<string, string>): NodeJS.ProcessEnv {
  const base: NodeJS.ProcessEnv = { ...process.env }
  for (const key of CONFIG_VARS) delete base[key]
  delete base.NODE_OPTIONS // the test runner's loaders have no business in the real command
  return { ...base, HOST: '127.0.0.1', LOG_LEVEL: 'info', ...env }
}

/** Spawned children still alive; killAll() ends them so a failed test never leaves one behind. */
const live = new Set<ChildProcess>()

export function killAll (): void {
  for (const child of live) child.kill('SIGKILL')
  live.clear()
}

/** A fresh DATA_DIR; removeDirs() deletes every one handed out. */
const dirs: string[] = []
export function dataDir (): string {
  const dir = tempDir('agentry-cli-')
  dirs.push(dir)
  return dir
}
export function removeDirs (): void {
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true })
}

export interface CliResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** Runs `agentry args...` to completion (SIGKILL after timeoutMs) and collects what it printed. */
export async function runCli (args: string[], env: Record<string, string>, timeoutMs = 15_000): Promise<CliResult> {
  // The bin itself, through its shebang, as `npx agentry` runs it.
  const child = spawn(path.join(ROOT, BIN), args, { cwd: ROOT, env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] })
  live.add(child)
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (s: string) => { stdout += s })
  child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s })
  const timer = setTimeout(() => { child.kill('SIGKILL') }, timeoutMs)
  try {
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
      child.once('error', reject)
      child.once('close', (c, s) => { resolve([c, s]) })
    })
    return { code, signal, stdout, stderr }
  } finally {
    clearTimeout(timer)
    live.delete(child)
  }
}

/** The last whitespace-separated word of the last non-empty line. */
export function lastWord (text: string): string {
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l !== '')
  return lines.at(-1)?.split(/\s+/).at(-1) ?? ''
}

export interface LogLine {
  level: number
  msg: string
  reqId?: string
  [key: string]: unknown
}

export interface ServeProcess {
  child: ChildProcess
  url: string
  port: number
  stdout: () => string
  stderr: () => string
  /** Every stdout line that starts with '{', parsed (throws if one is not JSON). */
  logs: () => LogLine[]
  /** Waits (bounded) until a log line matches; returns it. */
  waitForLog: (match: (line: LogLine) => boolean, timeoutMs?: number) => Promise<LogLine>
  /** Resolves with the exit code (or the signal's name) once the process has exited; bounded. */
  exited: (timeoutMs?: number) => Promise<number | string>
  /** Asks the process to stop (SIGTERM) and waits for it; SIGKILL if it takes longer than timeoutMs. */
  stop: (timeoutMs?: number) => Promise<number | string>
}

export async function until<T> (what: string, probe: () => T | undefined | Promise<T | undefined>, timeoutMs: number, intervalMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await probe()
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, intervalMs))
  }
}

/**
 * Starts `agentry serve` on a free loopback port and waits (bounded) for its 'Server listening' log line.
 * Resolves even when the process exits early, so the caller can inspect what it printed.
 */
export async function startServe (env: Record<string, string>, timeoutMs = 10_000): Promise<ServeProcess> {
  const port = await freePort()
  const child = spawn(path.join(ROOT, BIN), ['serve'], { cwd: ROOT, env: childEnv({ PORT: String(port), ...env }), stdio: ['ignore', 'pipe', 'pipe'] })
  live.add(child)
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (s: string) => { stdout += s })
  child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s })
  let exit: number | string | undefined
  const closed = new Promise<number | string>((resolve) => {
    child.once('close', (code, signal) => {
      live.delete(child)
      exit = code ?? signal ?? 'unknown'
      resolve(exit)
    })
  })
  const logs = () => stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as LogLine)
  const exited = async (ms = 10_000) => await until('the server process to exit', () => exit, ms)
  const waitForLog = async (match: (line: LogLine) => boolean, ms = 5_000) =>
    await until('a log line', () => logs().find(match), ms)
  const proc: ServeProcess = {
    child,
    url: `http://127.0.0.1:${port}`,
    port,
    stdout: () => stdout,
    stderr: () => stderr,
    logs,
    waitForLog,
    exited,
    stop: async (ms = 10_000) => {
      if (exit !== undefined) return exit
      child.kill('SIGTERM')
      try {
        return await exited(ms)
      } catch (err) {
        child.kill('SIGKILL')
        throw err
      }
    }
  }
  // Listening: its log line, or (below LOG_LEVEL=info, which has no such line) /healthz answering.
  const healthy = until('/healthz to answer', async () => {
    try {
      return (await fetch(`http://127.0.0.1:${port}/healthz`)).ok ? true : undefined
    } catch {
      return undefined
    }
  }, timeoutMs, 50)
  await Promise.race([
    waitForLog((l) => l.msg.startsWith('Server listening'), timeoutMs),
    healthy,
    closed
  ]).catch(async (err) => {
    child.kill('SIGKILL')
    throw new Error(`agentry serve did not start: ${(err as Error).message}\nstdout:\n${stdout}\nstderr:\n${stderr}`)
  })
  return proc
}

export interface Reply {
  status: number
  headers: Headers
  text: string
  // The parsed JSON envelope; tests assert on its fields.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body: any
}

/** One HTTP call; the body is parsed as JSON when it is JSON. */
export async function call (url: string, init: RequestInit = {}): Promise<Reply> {
  const res = await fetch(url, { ...init, signal: init.signal ?? AbortSignal.timeout(10_000) })
  const text = await res.text()
  let body: unknown = text
  try { body = JSON.parse(text) } catch { /* not JSON: the assertion will say so */ }
  return { status: res.status, headers: res.headers, text, body }
}

/**
 * One request on a brand-new TCP connection that closes after the response (no pooled keep-alive
 * socket): what a new client sees. Resolves with the reply, or with the error code when the connection fails.
 */
export async function oneShot (url: string, init: { method?: string, headers?: Record<string, string>, body?: string } = {}, timeoutMs = 10_000): Promise<Reply | string> {
  return await new Promise((resolve) => {
    const req = http.request(url, { method: init.method ?? 'GET', agent: false, headers: { ...init.headers, connection: 'close' }, timeout: timeoutMs }, (res) => {
      let text = ''
      res.setEncoding('utf8').on('data', (s: string) => { text += s })
      res.once('end', () => {
        let body: unknown = text
        try { body = JSON.parse(text) } catch { /* not JSON: the assertion will say so */ }
        const headers = new Headers()
        for (const [k, v] of Object.entries(res.headers)) if (typeof v === 'string') headers.set(k, v)
        resolve({ status: res.statusCode ?? 0, headers, text, body })
      })
      res.once('error', (err: NodeJS.ErrnoException) => { resolve(err.code ?? err.message) })
    })
    req.once('timeout', () => { req.destroy(new Error('timeout')) })
    req.once('error', (err: NodeJS.ErrnoException) => { resolve(err.code ?? err.message) })
    req.end(init.body)
  })
}

export interface Instances {
  a: ServeProcess
  b: ServeProcess
  /** Stops both processes, drops the store the leg provisioned and removes their DATA_DIR. */
  stop: () => Promise<void>
}

/**
 * Two `agentry serve` processes on one store, started at the same moment (so they migrate
 * together): on the PostgreSQL leg a fresh database and bucket, on the embedded leg one SQLite file
 * and one avatar folder. They share one STATIC_BASE_URL, as instances behind a balancer would.
 */
export async function startTwoInstances (token: string, env: Record<string, string> = {}): Promise<Instances> {
  const stores = await provisionStores()
  const shared = {
    ...stores.env,
    DATA_DIR: dataDir(),
    BOOTSTRAP_TOKEN: token,
    STATIC_BASE_URL: 'http://cdn.example.test/static',
    ...env
  }
  const [a, b] = await Promise.all([startServe(shared, 20_000), startServe(shared, 20_000)])
  // startServe resolves for a process that exited at start too; here both must be serving.
  for (const [name, p] of [['a', a], ['b', b]] as const) {
    if (p.child.exitCode !== null || p.child.signalCode !== null) {
      killAll()
      await stores.drop()
      throw new Error(`instance ${name} exited as it started (${p.child.exitCode ?? p.child.signalCode})\nstdout:\n${p.stdout()}\nstderr:\n${p.stderr()}`)
    }
  }
  return {
    a,
    b,
    stop: async () => {
      await Promise.allSettled([a.stop(), b.stop()])
      killAll()
      await stores.drop()
      removeDirs()
    }
  }
}
