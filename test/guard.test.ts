import assert from 'node:assert/strict'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { after, before, describe, it } from 'node:test'
import { fetchAvatar } from '../src/avatars/fetch.js'
import { isPublicAddress } from '../src/net/guard.js'
import { isAppError } from '../src/errors/index.js'
import { serversForSuite, type TestServer } from './helpers/server.js'
import type { FixtureServer } from './helpers/fixtures.js'

describe('avatar fetch guard (AVATAR_ALLOW_PRIVATE_NETWORKS unset)', () => {
  let srv: TestServer
  let fx: FixtureServer
  serversForSuite((s, f) => { srv = s; fx = f }, { AVATAR_ALLOW_PRIVATE_NETWORKS: 'false' })

  const port = () => new URL(fx.url).port
  const forbidden: Array<[string, () => string]> = [
    ['a loopback IP', () => `${fx.url}/photo.jpg`],
    ['a name that resolves to loopback', () => `http://localhost:${port()}/photo.jpg`],
    ['IPv6 loopback', () => `http://[::1]:${port()}/photo.jpg`],
    ['an IPv4-mapped IPv6 loopback', () => `http://[::ffff:127.0.0.1]:${port()}/photo.jpg`],
    ['loopback written as one number', () => `http://2130706433:${port()}/photo.jpg`],
    ['loopback written in hex', () => `http://0x7f.1:${port()}/photo.jpg`],
    ['the unspecified address', () => `http://0.0.0.0:${port()}/photo.jpg`],
    ['the cloud metadata address', () => 'http://169.254.169.254/latest/meta-data/'],
    ['a private 10/8 address', () => 'http://10.0.0.1/a.jpg'],
    ['a private 192.168/16 address', () => 'http://192.168.1.1/a.jpg'],
    ['a private 172.16/12 address', () => 'http://172.16.0.1/a.jpg'],
    ['carrier-grade NAT', () => 'http://100.64.0.1/a.jpg'],
    ['IPv6 unique-local', () => 'http://[fd00::1]/a.jpg'],
    ['IPv6 link-local', () => 'http://[fe80::1]/a.jpg']
  ]
  for (const [what, url] of forbidden) {
    it(`refuses ${what} with 422 avatar_host_forbidden, without connecting`, async () => {
      const hitsBefore = fx.hits.get('/photo.jpg') ?? 0
      const res = await srv.call('POST', '/agents', { serviceUserId: `g-${what}`, name: 'G', avatar: url() })
      assert.equal(res.status, 422)
      assert.equal(res.body.error.code, 'avatar_host_forbidden')
      assert.equal(fx.hits.get('/photo.jpg') ?? 0, hitsBefore)
      assert.deepEqual((await srv.call('GET', '/agents')).body.data, [])
    })
  }
})

describe('address policy', () => {
  it('allows only globally routable unicast addresses', () => {
    for (const ok of ['8.8.8.8', '1.1.1.1', '2606:4700:4700::1111', '::ffff:8.8.8.8']) assert.equal(isPublicAddress(ok), true, ok)
    for (const bad of ['127.0.0.1', '127.5.5.5', '10.1.2.3', '172.31.255.255', '192.168.0.1', '169.254.169.254', '100.64.0.1',
      '0.0.0.0', '255.255.255.255', '224.0.0.1', '::1', '::', 'fe80::1', 'fc00::1', 'fd00:ec2::254', '::ffff:127.0.0.1',
      '::ffff:10.0.0.1', '64:ff9b::a00:1', '2002:7f00:1::', '2001::1', 'not-an-ip']) {
      assert.equal(isPublicAddress(bad), false, bad)
    }
  })
})

describe('every redirect hop is checked', () => {
  // Here the fetcher runs in-process with a policy that trusts only 127.0.0.1 and treats 127.0.0.2
  // as internal: the only way to have an "allowed" and a "forbidden" host on one loopback machine.
  let server: http.Server
  let port = 0
  before(async () => {
    server = http.createServer((req, res) => {
      if (req.url === '/to-internal-ip') res.writeHead(302, { location: `http://127.0.0.2:${port}/secret` }).end()
      else if (req.url === '/to-file') res.writeHead(302, { location: 'file:///etc/passwd' }).end()
      else res.writeHead(200).end('secret data')
    })
    await new Promise<void>((resolve) => server.listen(0, '0.0.0.0', resolve))
    port = (server.address() as AddressInfo).port
  })
  after(async () => { await new Promise((resolve) => server.close(resolve)) })

  const onlyFirstLoopback = (address: string) => address === '127.0.0.1'
  const limits = { maxBytes: 1_000_000, timeoutMs: 2000, maxRedirects: 3, isAllowedAddress: onlyFirstLoopback }

  for (const [path, code] of [['/to-internal-ip', 'avatar_host_forbidden'], ['/to-file', 'avatar_url_invalid']] as const) {
    it(`${path} is refused with ${code}`, async () => {
      await assert.rejects(fetchAvatar(`http://127.0.0.1:${port}${path}`, limits), (err) => isAppError(err) && err.code === code)
    })
  }

  it('a name is checked on the address it resolves to, and only allowed addresses are dialled', async () => {
    const viaName = await fetchAvatar(`http://localhost:${port}/ok`, limits)
    assert.equal(viaName.bytes.toString(), 'secret data')
    const onlyOther = { ...limits, isAllowedAddress: (a: string) => a === '127.0.0.2' }
    await assert.rejects(fetchAvatar(`http://localhost:${port}/ok`, onlyOther), (err) => isAppError(err) && err.code === 'avatar_host_forbidden')
    await assert.rejects(fetchAvatar(`http://[::1]:${port}/ok`, limits), (err) => isAppError(err) && err.code === 'avatar_host_forbidden')
  })
})
