import assert from 'node:assert/strict'
import net from 'node:net'
import sharp from 'sharp'
import { after, before, describe, it } from 'node:test'
import { until } from './helpers/process.js'
import { startTestServer, type ApiResponse, type TestServer } from './helpers/server.js'
import { SVG, decompressionBomb, makeImages, type FixtureImages } from './helpers/fixtures.js'

function form (fields: Record<string, string>, file?: { bytes: Buffer, name: string, type: string }): FormData {
  const data = new FormData()
  for (const [k, v] of Object.entries(fields)) data.append(k, v)
  if (file !== undefined) data.append('avatar', new Blob([file.bytes], { type: file.type }), file.name)
  return data
}

describe('avatar uploads (multipart/form-data)', () => {
  let srv: TestServer
  let images: FixtureImages
  const send = async (method: string, path: string, body: FormData) => {
    const res = await fetch(`${srv.api}${path}`, { method, headers: { authorization: `Bearer ${srv.token}` }, body })
    return { status: res.status, headers: res.headers, body: await res.json() as ApiResponse['body'] }
  }
  before(async () => {
    images = await makeImages()
    srv = await startTestServer({ AVATAR_MAX_BYTES: '200000' })
  })
  after(async () => { await srv.close() })

  it('creates an agent with an uploaded avatar through the same pipeline', async () => {
    const res = await send('POST', '/agents', form({ serviceUserId: 'up-1', name: 'Uploaded', active: 'false', status: 'online' }, { bytes: images.rotatedJpeg, name: 'me.jpg', type: 'image/jpeg' }))
    assert.equal(res.status, 200, JSON.stringify(res.body))
    const a = res.body.data
    assert.equal(a.active, false)
    assert.equal(a.status, 'online')
    assert.equal(a.avatar.info.ext, 'jpeg')
    assert.deepEqual(a.avatar.meta, { width: 200, height: 300 }, 'EXIF orientation applied')
    assert.equal((await fetch(a.avatar.url['120x120'])).status, 200)
  })

  it('replaces the avatar on update with a file; fields alone work too', async () => {
    const { body: { data: a } } = await srv.call('POST', '/agents', { serviceUserId: 'up-2', name: 'Two' })
    const res = await send('PUT', `/agents/${a.id}`, form({ name: 'Two b' }, { bytes: images.png, name: 'x.bin', type: 'application/octet-stream' }))
    assert.equal(res.status, 200)
    assert.equal(res.body.data.avatar.info.ext, 'png', 'the type comes from the bytes, not the file name or part type')
    assert.equal(res.body.data.name, 'Two b')
    const fieldsOnly = await send('PUT', `/agents/${a.id}`, form({ status: 'online' }))
    assert.equal(fieldsOnly.status, 200)
    assert.equal(fieldsOnly.body.data.avatar.info.ext, 'png')
  })

  it('refuses bad files with the same codes as bad downloads, leaving nothing behind', async () => {
    const before = await srv.storedFiles()
    for (const [bytes, code] of [
      [SVG, 'avatar_unsupported_format'],
      [Buffer.from('just text'), 'avatar_not_an_image'],
      [images.jpeg.subarray(0, 2000), 'avatar_corrupt'],
      [decompressionBomb(), 'avatar_too_many_pixels'],
      [Buffer.alloc(300_000, 1), 'avatar_too_large']
    ] as const) {
      const res = await send('POST', '/agents', form({ serviceUserId: `bad-${code}`, name: 'Bad' }, { bytes, name: 'a.png', type: 'image/png' }))
      assert.equal(res.status, 422, `${code}: ${JSON.stringify(res.body)}`)
      assert.equal(res.body.error.code, code)
    }
    assert.deepEqual(await srv.storedFiles(), before)
    assert.equal((await srv.call('GET', '/agents?q=bad')).body.data.length, 0)
  })

  it('a URL and a file at once is a 400; so are unknown fields', async () => {
    const both = await send('POST', '/agents', form({ serviceUserId: 'up-3', name: 'X', avatar: 'http://example.com/a.jpg' }, { bytes: images.jpeg, name: 'a.jpg', type: 'image/jpeg' }))
    // Two parts named avatar: the file and the URL field.
    assert.equal(both.status, 400, JSON.stringify(both.body))
    const unknown = await send('POST', '/agents', form({ serviceUserId: 'up-4', name: 'X', colour: 'blue' }))
    assert.equal(unknown.status, 400)
    assert.equal(unknown.body.error.details[0].field, 'colour')
  })
})

describe('avatar processing: room for decoded pixels (AVATAR_PROCESSING_PIXELS)', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer({ AVATAR_PROCESSING_PIXELS: '3000000' }) })
  after(async () => { await srv.close() })

  /** One value of the service's /metrics text. */
  const metric = (text: string, line: RegExp): number => Number(line.exec(text)?.[1] ?? Number.NaN)

  it('large images sent at once are decoded one after another; small ones do not wait for one another', async () => {
    // 2000x1500, turned by its EXIF orientation (the whole image in memory): 3,014,400 pixels with
    // its 120x120 variant, so one fills the 3,000,000 of room and the others wait.
    const raw = Buffer.alloc(2000 * 1500 * 3, 90)
    for (let i = 0; i < raw.length; i += 7) raw[i] = i & 255
    const large = await sharp(raw, { raw: { width: 2000, height: 1500, channels: 3 } }).jpeg().withMetadata({ orientation: 6 }).toBuffer()
    const onePicture = 2000 * 1500 + 120 * 120
    let sampling = true
    let mostAtOnce = 0
    let mostQueued = 0
    const sampler = (async () => {
      while (sampling) {
        const text = await (await fetch(`${srv.url}/metrics`)).text()
        mostAtOnce = Math.max(mostAtOnce, metric(text, /^agentry_avatar_processing_pixels (\d+)$/m))
        mostQueued = Math.max(mostQueued, metric(text, /^agentry_avatar_processing_queued (\d+)$/m))
      }
    })()
    const send = async (i: number, bytes: Buffer) => await fetch(`${srv.api}/agents`, {
      method: 'POST',
      headers: { authorization: `Bearer ${srv.token}` },
      body: form({ serviceUserId: `room-${i}`, name: `Room ${i}` }, { bytes, name: 'a.jpg', type: 'image/jpeg' })
    })
    const answers = await Promise.all([0, 1, 2, 3].map(async (i) => await send(i, large)))
    sampling = false
    await sampler
    for (const res of answers) {
      const body = await res.json() as ApiResponse['body']
      assert.equal(res.status, 200, JSON.stringify(body))
      assert.deepEqual(body.data.avatar.meta, { width: 1500, height: 2000 })
    }
    assert.ok(mostAtOnce <= onePicture, `at most one large image at once: ${mostAtOnce} pixels`)
    assert.ok(mostQueued >= 1, 'the others waited their turn')
    const text = await (await fetch(`${srv.url}/metrics`)).text()
    assert.equal(metric(text, /^agentry_avatar_processing_pixels (\d+)$/m), 0)
    assert.equal(metric(text, /^agentry_avatar_processing_queued (\d+)$/m), 0)
    // Each wait is reported as a stage of its own, out of 'process'.
    assert.ok(metric(text, /^agentry_avatar_stage_duration_seconds_count\{stage="wait"\} (\d+)$/m) >= 4)

    // Small images take one step of the room each (a million pixels): three go at once, none waits.
    const quickWaits = (t: string) => metric(t, /^agentry_avatar_stage_duration_seconds_bucket\{le="0.001",stage="wait"\} (\d+)$/m)
    const quickBefore = quickWaits(text)
    const small = await sharp({ create: { width: 400, height: 400, channels: 3, background: '#3060a0' } }).jpeg().toBuffer()
    const smallAnswers = await Promise.all([4, 5, 6].map(async (i) => await send(i, small)))
    for (const res of smallAnswers) assert.equal(res.status, 200, await res.text())
    assert.equal(quickWaits(await (await fetch(`${srv.url}/metrics`)).text()) - quickBefore, 3)
  })
})

describe('avatar processing: a wait for room longer than AVATAR_TIMEOUT_MS', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer({ AVATAR_PROCESSING_PIXELS: '3000000', AVATAR_TIMEOUT_MS: '100' }) })
  after(async () => { await srv.close() })

  it('is a 503 with Retry-After that made nothing; the room it waited for is not lost', async () => {
    // Eight 3-megapixel turned JPEGs at once, decoded one at a time: those still waiting after 100 ms give up.
    const raw = Buffer.alloc(2000 * 1500 * 3, 60)
    for (let i = 0; i < raw.length; i += 5) raw[i] = (i * 7) & 255
    const large = await sharp(raw, { raw: { width: 2000, height: 1500, channels: 3 } }).jpeg().withMetadata({ orientation: 6 }).toBuffer()
    const answers = await Promise.all(Array.from({ length: 8 }, async (_, i) => {
      const res = await fetch(`${srv.api}/agents`, {
        method: 'POST',
        headers: { authorization: `Bearer ${srv.token}` },
        body: form({ serviceUserId: `waited-${i}`, name: `Waited ${i}` }, { bytes: large, name: 'a.jpg', type: 'image/jpeg' })
      })
      return { i, status: res.status, retryAfter: res.headers.get('retry-after'), body: await res.json() as ApiResponse['body'] }
    }))
    const refused = answers.filter((a) => a.status === 503)
    assert.ok(refused.length >= 1, `some waited too long: ${answers.map((a) => a.status).join(',')}`)
    for (const a of answers) assert.ok(a.status === 200 || a.status === 503, JSON.stringify(a.body))
    for (const a of refused) {
      assert.equal(a.body.error.code, 'service_unavailable')
      assert.match(a.body.error.message, /AVATAR_PROCESSING_PIXELS/)
      assert.equal(a.retryAfter, '1')
      const found = await srv.call('GET', `/agents?serviceUserId=waited-${a.i}`)
      assert.deepEqual(found.body.data, [], 'nothing made')
    }
    // Every place taken is given back, those of the requests that gave up too: room for all again.
    await until('the room to be free', async () => {
      const text = await (await fetch(`${srv.url}/metrics`)).text()
      return /^agentry_avatar_processing_pixels 0$/m.test(text) && /^agentry_avatar_processing_queued 0$/m.test(text) ? true : undefined
    }, 5000)
    const again = await fetch(`${srv.api}/agents`, {
      method: 'POST',
      headers: { authorization: `Bearer ${srv.token}` },
      body: form({ serviceUserId: 'waited-again', name: 'Again' }, { bytes: large, name: 'a.jpg', type: 'image/jpeg' })
    })
    assert.equal(again.status, 200, await again.text())
  })
})

describe('rate limits per token', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer({ RATE_LIMIT_MAX: '5', RATE_LIMIT_WINDOW_MS: '60000' }) })
  after(async () => { await srv.close() })

  it('answers 429 with Retry-After and RateLimit-* headers, per token; health and static are not limited', async () => {
    const statuses: number[] = []
    let last: Awaited<ReturnType<TestServer['call']>> | undefined
    for (let i = 0; i < 7; i++) {
      last = await srv.call('GET', '/agents')
      statuses.push(last.status)
      if (i === 0) {
        assert.equal(last.headers.get('ratelimit-limit'), '5')
        assert.equal(last.headers.get('ratelimit-remaining'), '4')
        assert.ok(last.headers.get('ratelimit-reset'))
      }
    }
    assert.deepEqual(statuses, [200, 200, 200, 200, 200, 429, 429])
    assert.equal(last!.body.status, 429)
    assert.equal(last!.body.error.code, 'rate_limited')
    assert.ok(Number(last!.headers.get('retry-after')) > 0)

    const other = await srv.services.tokens.create('other-widget')
    assert.equal((await srv.call('GET', '/agents', undefined, { authorization: other.token })).status, 200, 'another token has its own budget')
    for (let i = 0; i < 10; i++) {
      assert.equal((await fetch(`${srv.url}/healthz`)).status, 200)
      assert.equal((await fetch(`${srv.url}/readyz`)).status, 200)
    }
    assert.equal((await fetch(`${srv.url}/static/00/00/00/${'0'.repeat(64)}.jpeg`)).status, 404, 'static files are never limited (404, not 429)')
  })
})

describe('rate limits: memory per instance is bounded', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer({ RATE_LIMIT_MAX: '3', RATE_LIMIT_WINDOW_MS: '60000' }, { rateLimitKeys: 4 }) })
  after(async () => { await srv.close() })

  it('past the keys it remembers, the oldest window is forgotten', async () => {
    const remaining = async (token: string): Promise<string | null> =>
      (await srv.call('GET', '/agents', undefined, { authorization: `Bearer ${token}` })).headers.get('ratelimit-remaining')
    assert.equal(await remaining(srv.token), '2')
    // Three more valid tokens: four keys, all remembered.
    for (let i = 0; i < 3; i++) assert.equal(await remaining((await srv.services.tokens.create(`memory-${i}`)).token), '2')
    assert.equal(await remaining(srv.token), '1')
    // A fifth key (a request without a token: its address's window): the oldest window (the real
    // token's, begun first) is forgotten, and starts afresh.
    assert.equal((await fetch(`${srv.url}/api/external/v1/agents`)).headers.get('ratelimit-remaining'), '2')
    assert.equal(await remaining(srv.token), '2')
  })
})

describe('rate limits: tokens not known to be valid are counted by client address', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer({ RATE_LIMIT_MAX: '5', RATE_LIMIT_WINDOW_MS: '60000' }) })
  after(async () => { await srv.close() })

  it('a new made-up token each time is refused past the limit (429, not 401 for ever); a known valid token keeps its own window', async () => {
    const get = async (token: string) => await srv.call('GET', '/agents', undefined, { authorization: `Bearer ${token}` })
    const known = await get(srv.token)
    assert.equal(known.status, 200)
    assert.equal(known.headers.get('ratelimit-remaining'), '4')

    const statuses: number[] = []
    let last: Awaited<ReturnType<typeof get>> | undefined
    for (let i = 0; i < 50; i++) {
      last = await get(`made-up-${i}-0123456789`)
      statuses.push(last.status)
    }
    // Five in the address's window (looked up, 401), then refused before the token is looked up.
    assert.deepEqual(statuses, [...Array(5).fill(401), ...Array(45).fill(429)])
    assert.equal(last!.body.error.code, 'rate_limited')
    assert.match(last!.body.error.message, /from this address without a valid token/)
    assert.ok(Number(last!.headers.get('retry-after')) > 0)
    assert.equal(last!.headers.get('ratelimit-remaining'), '0')
    assert.equal((await fetch(`${srv.url}/api/external/v1/agents`)).status, 429, 'so is a request without a token, from the same address')

    // The token this instance knows is valid is counted by itself, and still served.
    const again = await get(srv.token)
    assert.equal(again.status, 200)
    assert.equal(again.headers.get('ratelimit-remaining'), '3')
    // A valid token this instance has not seen yet, from the same address, waits for the address's
    // window to end like the made-up ones (it is not looked up while the window is spent).
    const unseen = await srv.services.tokens.create('unseen-widget')
    assert.equal((await get(unseen.token)).status, 429)
  })
})

describe('rate limits: made-up tokens beyond what an instance remembers', () => {
  let srv: TestServer
  // Three tokens of each kind remembered: a flood of made-up tokens goes far past it.
  before(async () => { srv = await startTestServer({ RATE_LIMIT_MAX: '5', RATE_LIMIT_WINDOW_MS: '60000' }, { tokensKept: 3 }) })
  after(async () => { await srv.close() })

  it('never make the instance forget a token it knows to be valid', async () => {
    const get = async (token: string) => await srv.call('GET', '/agents', undefined, { authorization: `Bearer ${token}` })
    assert.equal((await get(srv.token)).status, 200)
    const statuses: number[] = []
    for (let i = 0; i < 10; i++) statuses.push((await get(`made-up-${i}-0123456789`)).status)
    assert.deepEqual(statuses, [...Array(5).fill(401), ...Array(5).fill(429)])
    // Still known valid: counted by itself, not held back by its address's spent window.
    const again = await get(srv.token)
    assert.equal(again.status, 200)
    assert.equal(again.headers.get('ratelimit-remaining'), '3')
  })
})

describe('rate limits behind a proxy (TRUST_PROXY)', () => {
  // Requests come from this test over loopback, as they would from a proxy on the same machine.
  const madeUp = async (srv: TestServer, from: string): Promise<number> =>
    (await fetch(`${srv.url}/api/external/v1/agents`, { headers: { authorization: 'Bearer made-up-0123456789', 'x-forwarded-for': from } })).status

  it('with the proxy trusted, each client address forwarded has its own window', async () => {
    const srv = await startTestServer({ RATE_LIMIT_MAX: '2', RATE_LIMIT_WINDOW_MS: '60000', TRUST_PROXY: 'loopback' })
    try {
      assert.deepEqual([await madeUp(srv, '203.0.113.7'), await madeUp(srv, '203.0.113.7'), await madeUp(srv, '203.0.113.7')], [401, 401, 429])
      assert.equal(await madeUp(srv, '203.0.113.8'), 401, 'another client behind the proxy is not held back')
      // IPv6: a client holds a whole /64, and changing the address within it changes nothing.
      assert.deepEqual([await madeUp(srv, '2001:db8:1:2::1'), await madeUp(srv, '2001:db8:1:2::abcd'), await madeUp(srv, '2001:0db8:0001:0002:ffff:0:0:1')], [401, 401, 429])
      assert.equal(await madeUp(srv, '2001:db8:1:3::1'), 401, 'the next /64 is another client')
      assert.deepEqual([await madeUp(srv, '::ffff:198.51.100.1'), await madeUp(srv, '198.51.100.1'), await madeUp(srv, '198.51.100.1')], [401, 401, 429], 'an IPv4 address mapped into IPv6 is the same address')
    } finally {
      await srv.close()
    }
  })

  it('without it, X-Forwarded-For is not believed: a client cannot pick its own window', async () => {
    const srv = await startTestServer({ RATE_LIMIT_MAX: '2', RATE_LIMIT_WINDOW_MS: '60000' })
    try {
      assert.deepEqual([await madeUp(srv, '203.0.113.7'), await madeUp(srv, '203.0.113.8'), await madeUp(srv, '203.0.113.9')], [401, 401, 429])
    } finally {
      await srv.close()
    }
  })
})

describe('a request body sent too slowly (REQUEST_TIMEOUT_MS)', () => {
  it('the connection is answered 408 and closed once the whole request has taken longer, whatever was sent', async () => {
    const srv = await startTestServer({ REQUEST_TIMEOUT_MS: '1000' })
    try {
      const { port } = new URL(srv.url)
      const socket = net.connect(Number(port), '127.0.0.1')
      let received = ''
      socket.on('data', (chunk: Buffer) => { received += chunk.toString('latin1') })
      const closed = new Promise<number>((resolve) => { socket.on('close', () => { resolve(Date.now()) }) })
      const started = Date.now()
      // A valid token, then a body of 1000 bytes of which only the first few ever come.
      socket.write(`POST /api/external/v1/agents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${srv.token}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"serviceUserId":`)
      const trickle = setInterval(() => { if (!socket.destroyed) socket.write(' ') }, 200)
      const at = await Promise.race([closed, new Promise<number>((resolve) => setTimeout(() => { resolve(-1) }, 10_000))])
      clearInterval(trickle)
      socket.destroy()
      assert.notEqual(at, -1, 'the connection was still open after 10 s')
      assert.ok(at - started >= 1000, 'not before the timeout')
      assert.match(received, /^HTTP\/1\.1 408 /)
      assert.equal(JSON.parse(received.split('\r\n\r\n')[1] ?? '').error.code, 'request_timeout', 'in the envelope')
      assert.equal((await srv.call('GET', '/agents')).body.data.length, 0, 'nothing made')
    } finally {
      await srv.close()
    }
  })
})

describe('token scopes', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer() })
  after(async () => { await srv.close() })

  it('a read token reads, and gets 403 on every write', async () => {
    const { body: { data: a } } = await srv.call('POST', '/agents', { serviceUserId: 'scoped', name: 'S' })
    const reader = await srv.services.tokens.create('default', { scope: 'read' })
    const auth = { authorization: `Bearer ${reader.token}` }
    assert.equal((await srv.call('GET', '/agents', undefined, auth)).status, 200)
    assert.equal((await srv.call('GET', `/agents/${a.id}`, undefined, auth)).status, 200)
    assert.equal((await srv.call('GET', '/agents/availability', undefined, auth)).status, 200)
    for (const [method, path, body] of [
      ['POST', '/agents', { serviceUserId: 'r', name: 'R' }],
      ['PUT', `/agents/${a.id}`, { name: 'R' }],
      ['PUT', '/agents/by-service-user-id/r', { name: 'R' }],
      ['DELETE', `/agents/${a.id}`, undefined],
      ['POST', `/agents/${a.id}/heartbeat`, undefined]
    ] as const) {
      const res = await srv.call(method, path, body, auth)
      assert.equal(res.status, 403, `${method} ${path}`)
      assert.equal(res.body.error.code, 'forbidden')
    }
    assert.equal((await srv.call('GET', `/agents/${a.id}`)).body.data.name, 'S')
  })
})
