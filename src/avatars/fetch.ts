import type http from 'node:http'
import { errors, isAppError, type AppError } from '../errors/index.js'
import type { AddressPolicy } from '../net/guard.js'
import type { HostResolver } from '../net/resolve.js'
import { ForbiddenAddressError, guardedRequest, type KeptConnections } from '../net/request.js'

export interface FetchLimits {
  maxBytes: number
  timeoutMs: number
  maxRedirects: number
}

export interface FetchOptions extends FetchLimits {
  isAllowedAddress: AddressPolicy
  /** How host names are resolved (default: the system's name servers). */
  resolver?: HostResolver
  /** Connections to reuse between downloads (each download has its own without). */
  connections?: KeptConnections
}

export interface Downloaded {
  bytes: Buffer
  /** The URL the bytes finally came from, after redirects. */
  url: string
}

/** Parses an avatar URL, accepting only absolute http(s) URLs. */
export function mustBeAvatarUrl (raw: string, base?: URL): URL {
  let url: URL
  try {
    url = new URL(raw, base)
  } catch {
    throw errors.avatar('avatar_url_invalid', `avatar must be an absolute http:// or https:// URL of an image (got ${JSON.stringify(truncate(raw))}).`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw errors.avatar('avatar_url_invalid', `avatar must be an http:// or https:// URL; ${url.protocol} URLs are not fetched.`)
  }
  return url
}

/**
 * Downloads an avatar under every guard at once: only http(s), each hop's resolved address checked
 * against the policy (so DNS tricks and redirects to internal hosts fail), a redirect limit,
 * a byte limit and one deadline for the whole transfer.
 */
export async function fetchAvatar (rawUrl: string, options: FetchOptions): Promise<Downloaded> {
  let url = mustBeAvatarUrl(rawUrl)
  const controller = new AbortController()
  const timer = setTimeout(() => { controller.abort() }, options.timeoutMs)
  try {
    for (let redirects = 0; ; redirects++) {
      const res = await guardedRequest(url, {
        signal: controller.signal,
        isAllowedAddress: options.isAllowedAddress,
        resolver: options.resolver,
        connections: options.connections,
        headers: { accept: 'image/jpeg, image/png, image/webp, image/gif;q=0.9, */*;q=0.1', 'user-agent': 'Agentry-avatar-fetcher/1' }
      })
      const status = res.statusCode ?? 0
      if (status >= 300 && status < 400 && res.headers.location !== undefined) {
        discard(res)
        if (redirects >= options.maxRedirects) {
          throw errors.avatar('avatar_too_many_redirects', `The avatar URL redirected more than ${options.maxRedirects} times; give the image's final URL.`)
        }
        url = mustBeAvatarUrl(res.headers.location, url)
        continue
      }
      if (status < 200 || status >= 300) {
        discard(res)
        throw errors.avatar('avatar_http_error', `Fetching the avatar answered HTTP ${status} from ${url.host}; check that the URL points at a public image.`)
      }
      const bytes = await readLimited(res, options.maxBytes)
      // A body that ends with its connection (no length, not chunked) ends "complete" when the
      // deadline cuts it too: what came by then is not the image.
      if (controller.signal.aborted) throw new Error('the deadline cut the download')
      return { bytes, url: url.href }
    }
  } catch (err) {
    throw toAvatarError(err, url, options, controller.signal.aborted)
  } finally {
    clearTimeout(timer)
  }
}

/** How much of a redirect's or an error's body is read (and dropped), and for how long, before its connection is cut. */
const DISCARD_BYTES = 64 * 1024
const DISCARD_MS = 1000

/**
 * Drops the body of an answer that is not the image (a redirect, an error page): read to its end
 * when it is short, so its connection can serve the next download, but cut off past DISCARD_BYTES
 * or DISCARD_MS, so an endless or trickling body holds no socket once the caller has its answer.
 */
function discard (res: http.IncomingMessage): void {
  let read = 0
  const cut = (): void => { res.destroy() }
  const timer = setTimeout(cut, DISCARD_MS)
  res.on('data', (chunk: Buffer) => {
    read += chunk.length
    if (read > DISCARD_BYTES) cut()
  })
  res.once('close', () => { clearTimeout(timer) })
  res.resume()
}

async function readLimited (res: http.IncomingMessage, maxBytes: number): Promise<Buffer> {
  const declared = Number(res.headers['content-length'])
  if (Number.isFinite(declared) && declared > maxBytes) {
    res.destroy()
    throw tooLarge(maxBytes)
  }
  const chunks: Buffer[] = []
  let total = 0
  for await (const chunk of res as AsyncIterable<Buffer>) {
    total += chunk.length
    if (total > maxBytes) {
      res.destroy()
      throw tooLarge(maxBytes)
    }
    chunks.push(chunk)
  }
  if (!res.complete) throw errors.avatar('avatar_unreachable', 'The avatar download was cut off before it finished; try again or use another URL.')
  return Buffer.concat(chunks, total)
}

function tooLarge (maxBytes: number): AppError {
  return errors.avatar('avatar_too_large', `The avatar is larger than ${maxBytes} bytes; use a smaller image.`)
}

function toAvatarError (err: unknown, url: URL, options: FetchOptions, timedOut: boolean): AppError {
  if (isAppError(err)) return err
  if (timedOut) {
    return errors.avatar('avatar_timeout', `The avatar took longer than ${options.timeoutMs} ms to download from ${url.host}; use a faster host or a smaller image.`, err)
  }
  if (err instanceof ForbiddenAddressError) {
    return errors.avatar('avatar_host_forbidden', `The avatar URL points at a private, loopback or link-local address (${url.host}), which is not fetched; use a public URL.`, err)
  }
  const code = (err as { code?: string }).code ?? 'unknown error'
  return errors.avatar('avatar_unreachable', `The avatar could not be fetched from ${url.host} (${code}); check the URL and that the host is up.`, err)
}

function truncate (s: string): string {
  return s.length > 100 ? `${s.slice(0, 100)}…` : s
}
