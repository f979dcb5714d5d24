import type dns from 'node:dns'
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import type { LookupFunction } from 'node:net'
import type { AddressPolicy } from './guard.js'
import { systemNameServers, type HostResolver } from './resolve.js'

/** The URL (or a name it resolves to) is an address the policy refuses. */
export class ForbiddenAddressError extends Error {
  readonly code = 'EFORBIDDENADDRESS'
}

export interface GuardedRequest {
  method?: 'GET' | 'POST'
  headers?: http.OutgoingHttpHeaders
  body?: Buffer | string
  signal: AbortSignal
  isAllowedAddress: AddressPolicy
  /** How host names are resolved (default: the system's name servers; see OutboundResolver). */
  resolver?: HostResolver
  /**
   * Reuse connections; without it each request has a connection of its own. A request sent on a
   * kept connection that the server closed just as it was reused (reset before any answer) is sent
   * again on a new one: give it only for requests that may arrive twice (a GET; a webhook delivery,
   * which receivers tell apart by its webhook-id).
   */
  connections?: KeptConnections
}

/**
 * Connections kept open between requests to the same host, so that downloads from one image host
 * do not each pay a TCP (and TLS) handshake. One set per address policy: a connection is only ever
 * made to an address the policy allowed, and reusing it cannot reach any other address.
 */
export class KeptConnections {
  readonly http: http.Agent
  readonly https: https.Agent

  constructor (idleMs = 4000) {
    // Idle connections close after idleMs (or sooner when the server says so in Keep-Alive), and
    // they never keep the process alive.
    const options = { keepAlive: true, timeout: idleMs, maxFreeSockets: 16, scheduling: 'lifo' as const }
    this.http = new http.Agent(options)
    this.https = new https.Agent(options)
  }

  close (): void {
    this.http.destroy()
    this.https.destroy()
  }
}

/**
 * One HTTP(S) request that only ever connects to addresses the policy allows: literal IPs are
 * checked here, names on the addresses they resolve to (so DNS tricks do not pass). No redirects
 * are followed; the caller decides what to do with a 3xx.
 */
export function guardedRequest (url: URL, options: GuardedRequest): Promise<http.IncomingMessage> {
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1')
  if (net.isIP(host) !== 0 && !options.isAllowedAddress(host)) {
    return Promise.reject(new ForbiddenAddressError(host))
  }
  const method = options.method ?? 'GET'
  const kept = options.connections
  const client = url.protocol === 'https:' ? https : http
  const send = (fresh: boolean): Promise<http.IncomingMessage> => new Promise((resolve, reject) => {
    let answered = false
    const req = client.request(url, {
      method,
      lookup: guardedLookup(options.resolver ?? systemNameServers, options.isAllowedAddress, options.signal),
      signal: options.signal,
      agent: kept === undefined || fresh ? false : url.protocol === 'https:' ? kept.https : kept.http,
      headers: options.headers
    }, (res) => { answered = true; resolve(res) })
    req.on('error', (err: NodeJS.ErrnoException) => {
      // A kept connection the server closed just as it was reused (before any answer): once more,
      // on a new one.
      if (!answered && req.reusedSocket && !fresh && !options.signal.aborted && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) {
        send(true).then(resolve, reject)
        return
      }
      reject(err)
    })
    req.end(options.body)
  })
  return send(false)
}

function guardedLookup (resolver: HostResolver, isAllowed: AddressPolicy, signal: AbortSignal): LookupFunction {
  return (hostname, options, callback) => {
    const family = options.family === 'IPv4' ? 4 : options.family === 'IPv6' ? 6 : options.family ?? 0
    resolver.resolve(hostname, signal).then((found) => {
      const addresses = family === 0 ? found : found.filter((a) => a.family === family)
      const allowed = addresses.filter((a) => isAllowed(a.address))
      const first = allowed[0]
      if (first === undefined) {
        callback(new ForbiddenAddressError(`${hostname} resolves to ${addresses.map((a) => a.address).join(', ')}`), '', 4)
        return
      }
      if (options.all === true) (callback as unknown as (e: null, a: dns.LookupAddress[]) => void)(null, allowed)
      else callback(null, first.address, first.family)
    }, (err: NodeJS.ErrnoException) => { callback(err, '', 4) })
  }
}
