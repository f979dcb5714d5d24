import dns from 'node:dns'

/** Turns a host name into the addresses to connect to, giving up when the signal aborts. */
export interface HostResolver {
  resolve: (hostname: string, signal: AbortSignal) => Promise<dns.LookupAddress[]>
}

/** Per query try, and tries per name server: a name server that does not answer costs ~3 s at most. */
const TRY_MS = 1000
const TRIES = 2
/** Once IPv4 addresses are in, how much longer the IPv6 query may take. */
const IPV6_GRACE_MS = 150
/** System lookups (dns.lookup) running at once, at most: see OutboundResolver. */
const SYSTEM_LOOKUPS_AT_ONCE = 2

/** Errors that mean "this name is not in the DNS" (as opposed to "the DNS did not answer"). */
const NOT_IN_DNS = new Set<string>([dns.NOTFOUND, dns.NODATA])

/**
 * Resolves the host names of avatar URLs and webhook endpoints without tying up libuv's thread
 * pool, which the local file store's writes and flushes, static file reads and sharp share (4
 * threads by default). `dns.lookup` (getaddrinfo) holds one of those threads until the system
 * resolver answers or gives up, which for a domain whose name servers never answer is many
 * seconds: a handful of such URLs would stall every file operation meanwhile.
 *
 * So names are asked of the DNS directly (c-ares: A and AAAA, on the event loop, no thread), from
 * `servers` (DNS_SERVERS) or the system's name servers, each try bounded (TRY_MS x TRIES per
 * server), and cancelled when the request's signal aborts. Only a name the DNS says does not exist
 * is handed to the system's lookup, for what only it knows (/etc/hosts, search domains such as a
 * cluster's short service names, mDNS), at most SYSTEM_LOOKUPS_AT_ONCE at a time, so that such
 * lookups can never hold more than half the pool.
 */
export class OutboundResolver implements HostResolver {
  private running = 0
  private readonly waiting: Array<() => void> = []

  constructor (private readonly servers?: readonly string[]) {}

  async resolve (hostname: string, signal: AbortSignal): Promise<dns.LookupAddress[]> {
    signal.throwIfAborted()
    // RFC 6761: always the machine itself; the DNS is not asked.
    if (hostname === 'localhost' || hostname.endsWith('.localhost')) return await this.systemLookup(hostname, signal)
    const resolver = new dns.promises.Resolver({ timeout: TRY_MS, tries: TRIES })
    if (this.servers !== undefined) resolver.setServers(this.servers)
    const cancel = (): void => { resolver.cancel() }
    signal.addEventListener('abort', cancel, { once: true })
    try {
      const [v4, v6] = await settleBoth(resolver.resolve4(hostname), resolver.resolve6(hostname))
      const addresses = [
        ...(v4.status === 'fulfilled' ? v4.value.map((address) => ({ address, family: 4 })) : []),
        ...(v6.status === 'fulfilled' ? v6.value.map((address) => ({ address, family: 6 })) : [])
      ]
      if (addresses.length > 0) return addresses
      signal.throwIfAborted()
      const failures = [v4, v6].flatMap((r) => r.status === 'rejected' ? [r.reason as NodeJS.ErrnoException] : [])
      const unanswered = failures.find((err) => !NOT_IN_DNS.has(err.code ?? ''))
      if (unanswered !== undefined) throw unanswered
    } finally {
      signal.removeEventListener('abort', cancel)
      resolver.cancel()
    }
    return await this.systemLookup(hostname, signal)
  }

  /** dns.lookup, at most SYSTEM_LOOKUPS_AT_ONCE at a time; a lookup waiting its turn gives up when the signal aborts. */
  private async systemLookup (hostname: string, signal: AbortSignal): Promise<dns.LookupAddress[]> {
    if (this.running >= SYSTEM_LOOKUPS_AT_ONCE) {
      await new Promise<void>((resolve, reject) => {
        const turn = (): void => {
          signal.removeEventListener('abort', gaveUp)
          resolve()
        }
        const gaveUp = (): void => {
          this.waiting.splice(this.waiting.indexOf(turn), 1)
          reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'))
        }
        this.waiting.push(turn)
        signal.addEventListener('abort', gaveUp, { once: true })
      })
    } else {
      this.running++
    }
    try {
      return await dns.promises.lookup(hostname, { all: true })
    } finally {
      // The slot passes straight to the next in line, if any.
      const next = this.waiting.shift()
      if (next !== undefined) next()
      else this.running--
    }
  }
}

/**
 * Both queries' outcomes (A first). Once A has found addresses, AAAA gets IPV6_GRACE_MS more (a
 * name server that drops AAAA queries must not hold up every name for seconds); the A query is
 * always waited for, as many hosts cannot reach IPv6 addresses at all.
 */
async function settleBoth<T extends unknown[]> (a: Promise<T>, b: Promise<T>): Promise<[PromiseSettledResult<T>, PromiseSettledResult<T>]> {
  const settled: Array<PromiseSettledResult<T> | undefined> = [undefined, undefined]
  const late = new Error('no IPv6 answer in time')
  return await new Promise((resolve) => {
    let timer: NodeJS.Timeout | undefined
    const done = (): void => {
      if (settled[0] === undefined || settled[1] === undefined) return
      clearTimeout(timer)
      resolve([settled[0], settled[1]])
    }
    const settle = (i: 0 | 1, result: PromiseSettledResult<T>): void => {
      if (settled[i] !== undefined) return
      settled[i] = result
      if (i === 0 && result.status === 'fulfilled' && result.value.length > 0) {
        timer = setTimeout(() => {
          settled[1] ??= { status: 'rejected', reason: late }
          done()
        }, IPV6_GRACE_MS)
      }
      done()
    }
    a.then((value) => { settle(0, { status: 'fulfilled', value }) }, (reason: unknown) => { settle(0, { status: 'rejected', reason }) })
    b.then((value) => { settle(1, { status: 'fulfilled', value }) }, (reason: unknown) => { settle(1, { status: 'rejected', reason }) })
  })
}

/** The resolver used when none is given: the system's name servers. */
export const systemNameServers = new OutboundResolver()
