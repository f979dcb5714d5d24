import assert from 'node:assert/strict'
import dns from 'node:dns'
import os from 'node:os'
import { after, before, describe, it } from 'node:test'
import { OutboundResolver } from '../src/net/resolve.js'
import { startDnsServer, type DnsServer } from './helpers/dns.js'
import { startFixtureServer, type FixtureServer } from './helpers/fixtures.js'
import { createWithUpload, startTestServer, type TestServer } from './helpers/server.js'

// Avatar hosts' names are asked of the name servers in DNS_SERVERS (here a stand-in on loopback:
// see test/helpers/dns.ts). This machine's own resolver answers at once and cannot be made to keep
// quiet, so these tests show what the service does with a name server that never answers: it gives
// up within its bounds, and file work goes on meanwhile.
describe('avatar host names asked of DNS_SERVERS', () => {
  let fx: FixtureServer
  let ns: DnsServer
  let srv: TestServer
  let port: string
  before(async () => {
    fx = await startFixtureServer()
    port = new URL(fx.url).port
    ns = await startDnsServer({
      'avatars.test': { A: ['127.0.0.1'] },
      'internal.test': { A: ['10.0.0.5'], AAAA: ['fd00::5'] },
      'silent.test': 'silent'
    })
  })
  after(async () => {
    await srv?.close()
    await ns.close()
    await fx.close()
  })

  it('a name is resolved by the name servers given, and its image downloaded', async () => {
    srv = await startTestServer({ DNS_SERVERS: ns.server, AVATAR_ALLOW_PRIVATE_NETWORKS: 'true' })
    const res = await srv.call('POST', '/agents', { serviceUserId: 'dns-1', name: 'By name', avatar: `http://avatars.test:${port}/photo.jpg` })
    assert.equal(res.status, 200, JSON.stringify(res.body))
    assert.equal(res.body.data.avatar.info.ext, 'jpeg')
    assert.ok(ns.queries.includes('avatars.test A'), `queries: ${ns.queries.join(', ')}`)
    // localhost is the machine itself (RFC 6761): not asked of the DNS.
    const local = await srv.call('POST', '/agents', { serviceUserId: 'dns-2', name: 'Local', avatar: `http://localhost:${port}/photo.jpg` })
    assert.equal(local.status, 200, JSON.stringify(local.body))
    assert.ok(!ns.queries.some((q) => q.startsWith('localhost')))
    await srv.close()
  })

  it('a name resolving to a private address is refused, without connecting', async () => {
    srv = await startTestServer({ DNS_SERVERS: ns.server, AVATAR_ALLOW_PRIVATE_NETWORKS: 'false' })
    const res = await srv.call('POST', '/agents', { serviceUserId: 'dns-3', name: 'Internal', avatar: 'http://internal.test/a.jpg' })
    assert.equal(res.status, 422)
    assert.equal(res.body.error.code, 'avatar_host_forbidden')
    assert.deepEqual((await srv.call('GET', '/agents')).body.data, [])
    await srv.close()
  })

  it('a name server that never answers: the request gives up within AVATAR_TIMEOUT_MS, and uploads and files are served meanwhile', async () => {
    srv = await startTestServer({ DNS_SERVERS: ns.server, AVATAR_ALLOW_PRIVATE_NETWORKS: 'true', AVATAR_TIMEOUT_MS: '1500' })
    // A file to read from the store while the lookups wait (not from memory: a new image each time).
    const first = await createWithUpload(srv, 'dns-upload-before', 'Uploaded', fx.images.png)
    assert.equal(first.status, 200, JSON.stringify(first.body))
    let pending = 8
    const silent = Array.from({ length: 8 }, async (_, i) => {
      try {
        return await srv.call('POST', '/agents', { serviceUserId: `dns-silent-${i}`, name: 'Silent', avatar: `http://silent.test:${port}/photo.jpg` })
      } finally {
        pending--
      }
    })
    while (ns.queries.filter((q) => q.startsWith('silent.test')).length < 8) await new Promise((resolve) => setTimeout(resolve, 10))
    // With every lookup waiting: an upload (decoded and written through the thread pool) and a file read.
    const during = await createWithUpload(srv, 'dns-upload-during', 'Uploaded', fx.images.webp)
    assert.equal(during.status, 200, JSON.stringify(during.body))
    const file = await fetch(first.body.data.avatar.url['520x400'] as string)
    assert.equal(file.status, 200)
    assert.equal(pending, 8, 'the upload and the file were answered while every lookup still waited')
    for (const res of await Promise.all(silent)) {
      assert.equal(res.status, 422)
      assert.equal(res.body.error.code, 'avatar_timeout')
    }
    assert.equal((await srv.call('GET', '/agents?q=Silent')).body.data.length, 0)
  })
})

describe('a name with both IPv4 and IPv6 addresses', () => {
  it('the IPv4 answer is waited for even when the IPv6 one comes first (many hosts cannot reach IPv6)', async () => {
    const ns = await startDnsServer({ 'both.test': { A: ['192.0.2.7'], AAAA: ['2001:db8::7'], delayAMs: 400 } })
    try {
      const found = await new OutboundResolver([ns.server]).resolve('both.test', new AbortController().signal)
      assert.deepEqual(found, [{ address: '192.0.2.7', family: 4 }, { address: '2001:db8::7', family: 6 }])
    } finally {
      await ns.close()
    }
  })
})

describe('a name the DNS does not know goes to the system lookup (/etc/hosts, search domains)', () => {
  it('the machine\'s own host name: NXDOMAIN from the name server, then found as the system finds it', async () => {
    const ns = await startDnsServer({})
    try {
      const name = os.hostname()
      const system = await dns.promises.lookup(name, { all: true })
      const found = await new OutboundResolver([ns.server]).resolve(name, new AbortController().signal)
      assert.deepEqual(found, system)
      assert.ok(ns.queries.includes(`${name} A`), `queries: ${ns.queries.join(', ')}`)
    } finally {
      await ns.close()
    }
  })
})
