import dns from 'node:dns'
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import type { LookupFunction } from 'node:net'
import type { AddressPolicy } from './guard.js'

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
  const client = url.protocol === 'https:' ? https : http
  return new Promise((resolve, reject) => {
    const req = client.request(url, {
      method: options.method ?? 'GET',
      lookup: guardedLookup(options.isAllowedAddress),
      signal: options.signal,
      agent: false,
      headers: options.headers
    }, resolve)
    req.on('error', reject)
    req.end(options.body)
  })
}

function guardedLookup (isAllowed: AddressPolicy): LookupFunction {
  return (hostname, options, callback) => {
    dns.lookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err !== null) { callback(err, '', 4); return }
      const allowed = addresses.filter((a) => isAllowed(a.address))
      const first = allowed[0]
      if (first === undefined) {
        callback(new ForbiddenAddressError(`${hostname} resolves to ${addresses.map((a) => a.address).join(', ')}`), '', 4)
        return
      }
      if (options.all === true) (callback as unknown as (e: null, a: dns.LookupAddress[]) => void)(null, allowed)
      else callback(null, first.address, first.family)
    })
  }
}
