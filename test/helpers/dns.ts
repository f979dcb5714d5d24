import dgram from 'node:dgram'
import dnsPacket from 'dns-packet'

/**
 * A name server on loopback UDP, for tests that point DNS_SERVERS at it. It is a stand-in: no real
 * DNS server runs on this machine, and none can be made to keep quiet or to answer made-up names on
 * demand. Names given addresses are answered (A, AAAA; the other type: no records), names marked
 * 'silent' are never answered, and any other name does not exist (NXDOMAIN).
 */
export interface DnsServer {
  /** For DNS_SERVERS: `127.0.0.1:<port>`. */
  server: string
  /** Every question received, as `<name> <type>`. */
  queries: string[]
  close: () => Promise<void>
}

/** Addresses by name; `delayAMs` holds back the A answer (the AAAA one goes at once). */
export type DnsRecords = Record<string, { A?: string[], AAAA?: string[], delayAMs?: number } | 'silent'>

const NXDOMAIN = 3

export async function startDnsServer (records: DnsRecords): Promise<DnsServer> {
  const socket = dgram.createSocket('udp4')
  const queries: string[] = []
  socket.on('message', (message, from) => {
    const query = dnsPacket.decode(message)
    const question = query.questions?.[0]
    if (question === undefined) return
    queries.push(`${question.name} ${question.type}`)
    const known = records[question.name.toLowerCase()]
    if (known === 'silent') return
    const type = question.type === 'A' || question.type === 'AAAA' ? question.type : undefined
    const addresses = known === undefined || type === undefined ? [] : (known[type] ?? []).map((data) => ({ type, name: question.name, ttl: 60, data }))
    const answer = dnsPacket.encode({
      type: 'response',
      id: query.id,
      flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE | (known === undefined ? NXDOMAIN : 0),
      questions: [question],
      answers: addresses
    })
    const delay = type === 'A' && known !== undefined ? known.delayAMs ?? 0 : 0
    setTimeout(() => { socket.send(answer, from.port, from.address) }, delay)
  })
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve))
  return {
    server: `127.0.0.1:${socket.address().port}`,
    queries,
    close: async () => { await new Promise<void>((resolve) => { socket.close(() => { resolve() }) }) }
  }
}
