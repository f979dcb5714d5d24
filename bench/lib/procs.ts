import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'

/**
 * Child processes of the bench: every one is tracked, and killed when the bench ends for any reason
 * (normal end, an exception, Ctrl-C, SIGTERM), so a failed run never leaves a server behind.
 */
const live = new Set<ChildProcess>()
const tempDirs = new Set<string>()

export function killAllChildren (): void {
  for (const child of live) {
    try { child.kill('SIGKILL') } catch { /* already gone */ }
  }
  live.clear()
}

export function removeTempDirs (): void {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true })
  tempDirs.clear()
}

/** Asynchronous clean-ups still due (e.g. dropping a PostgreSQL database); run on a signal too. */
const pending = new Set<() => Promise<void>>()

/** Registers a clean-up for the signal path; returns a function that unregisters it. */
export function onInterrupt (fn: () => Promise<void>): () => void {
  pending.add(fn)
  return () => { pending.delete(fn) }
}

let interrupted = false
/** True once a signal has started tearing everything down: later failures are its echo. */
export const wasInterrupted = (): boolean => interrupted

let hooked = false
/** Kills children on exit and on SIGINT/SIGTERM/SIGHUP; call once at start. */
export function installCleanupHooks (): void {
  if (hooked) return
  hooked = true
  process.on('exit', () => {
    killAllChildren()
    removeTempDirs()
  })
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      interrupted = true
      process.stderr.write(`\nbench: ${signal}, stopping every process it started\n`)
      killAllChildren()
      removeTempDirs()
      // Bounded: whatever has not finished in 5 s is left.
      const cleanups = Promise.allSettled([...pending].map(async (fn) => { await fn() }))
      void Promise.race([cleanups, sleep(5000)]).finally(() => process.exit(130))
    })
  }
}

export function tempDir (prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  tempDirs.add(dir)
  return dir
}

export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo
      srv.close(() => { resolve(port) })
    })
  })
}

export const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

export interface Proc {
  name: string
  child: ChildProcess
  pid: number
  url: string
  /** The last 64 KiB the process printed (stdout and stderr together). */
  output: () => string
  exitedWith: () => number | string | undefined
  /** SIGTERM, then SIGKILL after timeoutMs; resolves when the process is gone. */
  stop: (timeoutMs?: number) => Promise<number | string>
}

export interface SpawnOptions {
  cwd: string
  env: NodeJS.ProcessEnv
  port: number
  /** Extra flags for node itself, e.g. --cpu-prof. */
  nodeFlags?: string[]
  /** Pins the process to these CPUs (taskset list, e.g. "1"). */
  cpus?: string
}

/** Starts `node <args>` as a tracked child. */
export function spawnNode (name: string, args: string[], options: SpawnOptions): Proc {
  const nodeArgs = [...(options.nodeFlags ?? []), ...args]
  // taskset execs node in its own place, so the pid is node's.
  const [command, argv] = options.cpus === undefined ? [process.execPath, nodeArgs] : ['taskset', ['-c', options.cpus, process.execPath, ...nodeArgs]]
  const child = spawn(command, argv, {
    cwd: options.cwd,
    env: options.env,
    stdio: ['ignore', 'pipe', 'pipe']
  })
  if (child.pid === undefined) throw new Error(`could not start ${name}`)
  live.add(child)
  let out = ''
  const keep = (s: string) => {
    out += s
    if (out.length > 65536) out = out.slice(-65536)
  }
  child.stdout?.setEncoding('utf8').on('data', keep)
  child.stderr?.setEncoding('utf8').on('data', keep)
  let exit: number | string | undefined
  const closed = new Promise<number | string>((resolve) => {
    child.once('close', (code, signal) => {
      live.delete(child)
      exit = code ?? signal ?? 'unknown'
      resolve(exit)
    })
  })
  return {
    name,
    child,
    pid: child.pid,
    url: `http://127.0.0.1:${options.port}`,
    output: () => out,
    exitedWith: () => exit,
    stop: async (timeoutMs = 10_000) => {
      if (exit !== undefined) return exit
      child.kill('SIGTERM')
      const timer = setTimeout(() => { child.kill('SIGKILL') }, timeoutMs)
      try {
        return await closed
      } finally {
        clearTimeout(timer)
      }
    }
  }
}

/** Polls url until it answers 2xx; bounded. Fails early, with the process's output, when it exits. */
export async function waitReady (proc: Proc, url: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  let last = ''
  while (Date.now() < deadline) {
    if (proc.exitedWith() !== undefined) {
      throw new Error(`${proc.name} exited (${String(proc.exitedWith())}) before it was ready:\n${proc.output()}`)
    }
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) })
      await res.arrayBuffer()
      if (res.ok) return
      last = `HTTP ${res.status}`
    } catch (err) {
      last = (err as Error).message
    }
    await sleep(50)
  }
  proc.child.kill('SIGKILL')
  throw new Error(`${proc.name} was not ready at ${url} after ${timeoutMs} ms (${last}):\n${proc.output()}`)
}

export interface MemStatus {
  rssKb: number
  hwmKb: number
}

/** VmRSS and VmHWM of a process from /proc; undefined when it is gone or /proc is not there. */
export function readMem (pid: number): MemStatus | undefined {
  let text: string
  try {
    text = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  } catch {
    return undefined
  }
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN)
  return { rssKb: field('VmRSS'), hwmKb: field('VmHWM') }
}

/** Resets VmHWM to the current RSS (Linux clear_refs 5); false when not permitted. */
export function resetPeak (pid: number): boolean {
  try {
    fs.writeFileSync(`/proc/${pid}/clear_refs`, '5')
    return true
  } catch {
    return false
  }
}

export interface MemPeak {
  /** Largest VmRSS sampled. */
  peakRssMb: number
  /** VmHWM at the end: the kernel's own peak (since the reset at the start when that worked, else since process start). */
  hwmMb: number
  hwmSinceReset: boolean
}

/** Samples a process's memory every intervalMs until stopped. */
export function sampleMemory (pid: number, intervalMs = 50): { stop: () => MemPeak } {
  const reset = resetPeak(pid)
  let peak = readMem(pid)?.rssKb ?? 0
  const timer = setInterval(() => {
    const m = readMem(pid)
    if (m !== undefined && m.rssKb > peak) peak = m.rssKb
  }, intervalMs)
  return {
    stop: () => {
      clearInterval(timer)
      const m = readMem(pid)
      if (m !== undefined && m.rssKb > peak) peak = m.rssKb
      return { peakRssMb: peak / 1024, hwmMb: (m?.hwmKb ?? 0) / 1024, hwmSinceReset: reset }
    }
  }
}

/** CPU seconds (user + system, all threads) a process has used so far; undefined when it is gone. */
export function readCpuSeconds (pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Fields after the command name (which may hold spaces) start after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS
  } catch {
    return undefined
  }
}
/** USER_HZ: 100 on every Linux this runs on. */
const CLOCK_TICKS = 100

/** Busy CPU seconds of the whole machine so far (all CPUs; idle and iowait excluded), from /proc/stat. */
export function readMachineBusySeconds (): number | undefined {
  try {
    const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? ''
    const [, user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).map(Number)
    return ((user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0)) / CLOCK_TICKS
  } catch {
    return undefined
  }
}

/** CPU seconds so far of every process with this command name (e.g. all PostgreSQL backends), by pid. */
export function readCpuByName (name: string): Map<number, number> {
  const out = new Map<number, number>()
  let pids: string[]
  try {
    pids = fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))
  } catch {
    return out
  }
  for (const pid of pids) {
    try {
      if (fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() !== name) continue
      const cpu = readCpuSeconds(Number(pid))
      if (cpu !== undefined) out.set(Number(pid), cpu)
    } catch { /* gone meanwhile */ }
  }
  return out
}

/** CPU seconds used between two readings of readCpuByName (processes started meanwhile count whole). */
export function cpuDelta (before: Map<number, number>, after: Map<number, number>): number {
  let total = 0
  for (const [pid, cpu] of after) total += cpu - (before.get(pid) ?? 0)
  return total
}
