import fs from 'node:fs'
import path from 'node:path'
import type { RequestMetrics } from '../metrics/requests.js'
import { AVATAR_KEY_PATTERN, IMMUTABLE } from '../storage/blob-store.js'
import { MIME_TYPES, type ImageFormat } from '../avatars/process.js'
import type { FastPath } from './fast-path.js'
import { requestIdOf } from './request-id.js'

/** Files larger than this are always streamed from disk. */
const MAX_FILE_BYTES = 256 * 1024

/** What an entry costs beyond the file's bytes (its headers, the map entry), counted against maxBytes. */
const ENTRY_OVERHEAD = 512

interface Entry {
  /** Where the file was read from. */
  readonly file: string
  readonly body: Buffer
  readonly headers: readonly string[]
  readonly ino: number
  readonly size: number
  readonly mtimeMs: number
}

export interface StaticFastPathDeps {
  /** The path of the file holding a key's content (LocalBlobStore.pathOf). */
  pathOf: (key: string) => string | undefined
  /** Bytes of file content kept in memory at most; 0 turns the cache off. */
  maxBytes: number
  requests: RequestMetrics
  /** True once shutdown has begun: every request then goes through Fastify. */
  closing: () => boolean
  /** Counts the requests answered here (agentry_http_fast_answers_total). */
  answered: () => void
}

/**
 * `GET /static/<avatar key>` answered from memory for small files already read once, ahead of
 * Fastify and @fastify/static. That plugin checks the spelling of every path segment with a
 * directory listing, then stats, opens, reads and closes the file: nine trips to the thread pool
 * and ~700 µs of CPU per file on a 2-core VM. Avatar files are content-addressed and never change,
 * so their bytes can be kept; what can change is whether they exist (the file collector deletes
 * files no avatar refers to, maybe from another instance sharing the folder), so every answer from
 * memory first stats the file, synchronously (as SQLite reads the disk on this thread too), and a
 * file that is gone or not the one read is dropped and left to the usual way, which answers 404.
 *
 * The answer carries the headers @fastify/static writes, in its order (test/static-cache.test.ts
 * compares them). Declined, and so served the usual way: HEAD, conditional and range requests, a
 * query string, anything that is not an avatar key, a file not read yet (it is then read in the
 * background, if small enough), shutdown.
 */
export function staticFastPath (deps: StaticFastPathDeps): FastPath {
  const observe = deps.requests.forRoute('GET', '/static/*')
  const prefix = '/static/'
  const entries = new Map<string, Entry>()
  const loading = new Set<string>()
  let bytes = 0

  const cost = (body: Buffer): number => body.length + ENTRY_OVERHEAD
  const drop = (key: string, entry: Entry): void => {
    entries.delete(key)
    bytes -= cost(entry.body)
  }

  const load = async (key: string, file: string): Promise<void> => {
    loading.add(key)
    try {
      const stat = await fs.promises.stat(file)
      if (!stat.isFile() || stat.size > MAX_FILE_BYTES || stat.size + ENTRY_OVERHEAD > deps.maxBytes) return
      const body = await fs.promises.readFile(file)
      if (body.length !== stat.size || entries.has(key)) return
      while (bytes + cost(body) > deps.maxBytes) {
        // Oldest first out: Map keeps insertion order.
        const oldest = entries.entries().next()
        if (oldest.done === true) break
        drop(oldest.value[0], oldest.value[1])
      }
      const ext = path.extname(file).slice(1) as ImageFormat
      entries.set(key, {
        body,
        // As @fastify/send writes them (its weak ETag is the size and mtime in hex).
        headers: [
          'accept-ranges', 'bytes',
          'cache-control', IMMUTABLE,
          'last-modified', stat.mtime.toUTCString(),
          'etag', `W/"${stat.size.toString(16)}-${stat.mtime.getTime().toString(16)}"`,
          'content-type', MIME_TYPES[ext],
          'content-length', String(body.length),
          'x-content-type-options', 'nosniff',
          'content-security-policy', "default-src 'none'"
        ],
        file,
        ino: stat.ino,
        size: stat.size,
        mtimeMs: stat.mtimeMs
      })
      bytes += cost(body)
    } catch {
      // Gone or unreadable: the usual way answers for it.
    } finally {
      loading.delete(key)
    }
  }

  return (req, res) => {
    if (req.method !== 'GET' || deps.maxBytes === 0) return false
    const url = req.url ?? ''
    if (!url.startsWith(prefix)) return false
    const key = url.slice(prefix.length)
    if (!AVATAR_KEY_PATTERN.test(key)) return false
    const headers = req.headers
    // Conditional and range requests go the usual way, which answers them (304, 206, 412, 416).
    if (headers['if-none-match'] !== undefined || headers['if-modified-since'] !== undefined || headers.range !== undefined ||
      headers['if-match'] !== undefined || headers['if-unmodified-since'] !== undefined || headers['content-length'] !== undefined || headers['transfer-encoding'] !== undefined || deps.closing()) return false
    const start = performance.now()
    const entry = entries.get(key)
    if (entry === undefined) {
      if (!loading.has(key)) {
        const file = deps.pathOf(key)
        if (file !== undefined) void load(key, file)
      }
      return false
    }
    const stat = fs.statSync(entry.file, { throwIfNoEntry: false })
    if (stat === undefined || stat.ino !== entry.ino || stat.size !== entry.size || stat.mtimeMs !== entry.mtimeMs) {
      drop(key, entry)
      return false
    }
    res.writeHead(200, ['x-request-id', requestIdOf(headers), ...entry.headers])
    res.end(entry.body)
    observe(200, (performance.now() - start) / 1000)
    deps.answered()
    return true
  }
}
