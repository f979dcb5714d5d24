import assert from 'node:assert/strict'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { after, before, describe, it } from 'node:test'
import { AgentryClient, AgentryError, type AgentEvent } from '../src/client/index.js'
import { startTestServer, type TestServer } from './helpers/server.js'
import { makeImages, startFixtureServer, type FixtureServer } from './helpers/fixtures.js'

describe('typed client (agentry/client) against a live server', () => {
  let srv: TestServer
  let fx: FixtureServer
  let client: AgentryClient
  before(async () => {
    fx = await startFixtureServer()
    srv = await startTestServer({ EVENTS_POLL_MS: '50' })
    client = new AgentryClient({ baseUrl: srv.url, token: srv.token })
  })
  after(async () => {
    await srv.close()
    await fx.close()
  })

  it('is what the package exports as agentry/client', async () => {
    const mod = await import('agentry/client') as { AgentryClient: unknown, AgentryError: unknown }
    assert.equal(typeof mod.AgentryClient, 'function')
    assert.equal(typeof mod.AgentryError, 'function')
  })

  it('creates, reads, updates, syncs and deletes agents', async () => {
    const a = await client.createAgent({ serviceUserId: 'c-1', name: 'Client One', avatar: `${fx.url}/photo.jpg` })
    assert.equal(a.name, 'Client One')
    assert.equal(a.avatar?.info.ext, 'jpeg')
    assert.deepEqual(await client.getAgent(a.id), a)
    assert.deepEqual(await client.getAgentByServiceUserId('c-1'), a)
    const b = await client.updateAgent(a.id, { status: 'online' })
    assert.equal(b.status, 'online')
    const synced = await client.upsertAgent('c-2', { name: 'Synced' })
    assert.equal(synced.created, true)
    assert.equal((await client.upsertAgent('c-2', { name: 'Synced' })).created, false)
    const beat = await client.heartbeat(synced.agent.id)
    assert.equal(beat.agent.status, 'online')
    assert.ok(beat.onlineUntil > Date.now() / 1000)
    assert.deepEqual(await client.availability(), { online: 2, available: true })
    const deleted = await client.deleteAgent(synced.agent.id)
    assert.equal(deleted.id, synced.agent.id)
  })

  it('uploads an avatar file', async () => {
    const { png } = await makeImages()
    const a = await client.createAgent({ serviceUserId: 'c-up', name: 'Up' }, { avatarFile: { data: new Blob([png], { type: 'image/png' }), filename: 'a.png' } })
    assert.equal(a.avatar?.info.ext, 'png')
  })

  it('throws AgentryError with the envelope\'s status, code, message and details', async () => {
    await assert.rejects(client.getAgent('00000000-0000-4000-8000-000000000000'), (err) => err instanceof AgentryError && err.status === 404 && err.code === 'not_found' && err.message.length > 10)
    await assert.rejects(client.createAgent({ serviceUserId: 'c-bad', name: 'Bad', status: 'away' as 'online' }), (err) =>
      err instanceof AgentryError && err.status === 400 && err.code === 'validation_failed' && err.details?.[0]?.field === 'status')
    await assert.rejects(new AgentryClient({ baseUrl: srv.url, token: 'wrong' }).listAgents(), (err) => err instanceof AgentryError && err.status === 401)
  })

  it('iterates paginated lists to the end', async () => {
    for (let i = 0; i < 12; i++) await client.createAgent({ serviceUserId: `c-page-${i}`, name: `Paged ${i}` })
    const seen: string[] = []
    for await (const agent of client.agents({ q: 'paged', limit: 5 })) seen.push(agent.serviceUserId)
    assert.equal(seen.length, 12)
    assert.equal(new Set(seen).size, 12)
    const page = await client.listAgents({ limit: 5, q: 'paged' })
    assert.equal(page.data.length, 5)
    assert.ok(page.nextCursor)
  })

  it('a read whose answer is cut off half way is retried', async () => {
    const a = await client.createAgent({ serviceUserId: 'c-cut', name: 'Cut off' })
    // A proxy that sends the first answer's headers and half its body, then hangs up.
    let cut = 0
    const proxy = http.createServer((req, res) => {
      http.get(`${srv.url}${req.url ?? '/'}`, { headers: req.headers }, (up) => {
        const body: Buffer[] = []
        up.on('data', (c: Buffer) => body.push(c))
        up.on('end', () => {
          const whole = Buffer.concat(body)
          res.writeHead(up.statusCode ?? 502, up.headers)
          if (cut++ === 0) { res.write(whole.subarray(0, whole.length >> 1)); setTimeout(() => { res.destroy() }, 20); return }
          res.end(whole)
        })
      })
    })
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve))
    try {
      const viaProxy = new AgentryClient({ baseUrl: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`, token: srv.token, retryDelayMs: 20 })
      assert.deepEqual(await viaProxy.getAgent(a.id), a)
      assert.equal(cut, 2, 'asked twice')
    } finally {
      proxy.closeAllConnections()
      await new Promise<void>((resolve) => proxy.close(() => { resolve() }))
    }
  })

  it('an answer that does not come within timeoutMs fails with a TimeoutError; a read is retried first', async () => {
    const a = await client.createAgent({ serviceUserId: 'c-slow', name: 'Slow' })
    // A proxy that never answers the first request it gets (nor any write), and forwards the rest.
    const seen: string[] = []
    const proxy = http.createServer((req, res) => {
      seen.push(req.method ?? '')
      if (seen.length === 1 || req.method !== 'GET') return
      http.get(`${srv.url}${req.url ?? '/'}`, { headers: req.headers }, (up) => { res.writeHead(up.statusCode ?? 502, up.headers); up.pipe(res) })
    })
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve))
    try {
      const viaProxy = new AgentryClient({ baseUrl: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`, token: srv.token, retryDelayMs: 20, timeoutMs: 300 })
      assert.deepEqual(await viaProxy.getAgent(a.id), a)
      assert.deepEqual(seen, ['GET', 'GET'])
      seen.length = 0
      await assert.rejects(viaProxy.updateAgent(a.id, { name: 'x' }), { name: 'TimeoutError' })
      assert.deepEqual(seen, ['PUT'], 'a write is not sent again')
    } finally {
      proxy.closeAllConnections()
      await new Promise((resolve) => proxy.close(resolve))
    }
  })

  /**
   * A proxy in front of the test server: each request is forwarded whole (`sent` is told once it
   * is), and `answer` passes the server's answer on (by default, all of it).
   */
  async function proxyToServer (hooks: {
    sent?: (req: http.IncomingMessage, res: http.ServerResponse) => void
    answer?: (req: http.IncomingMessage, res: http.ServerResponse, forward: () => void) => void
  }): Promise<http.Server> {
    const proxy = http.createServer((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        const upstream = http.request(`${srv.url}${req.url ?? '/'}`, { method: req.method, headers: req.headers }, (up) => {
          const body: Buffer[] = []
          up.on('data', (c: Buffer) => body.push(c))
          up.on('end', () => {
            const forward = (): void => { if (!res.destroyed) res.writeHead(up.statusCode ?? 502, up.headers).end(Buffer.concat(body)) }
            if (hooks.answer === undefined) forward()
            else hooks.answer(req, res, forward)
          })
        })
        upstream.end(Buffer.concat(chunks))
        hooks.sent?.(req, res)
      })
    })
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve))
    return proxy
  }

  it('createAgent is retry-safe: a lost answer is retried with the same Idempotency-Key and creates one agent', async () => {
    // A proxy that drops the first answer on the floor (the request did reach the server).
    let dropped = false
    const seen: string[] = []
    const proxy = await proxyToServer({
      sent: (req) => { seen.push(req.method ?? '') },
      answer: (req, res, forward) => {
        if (!dropped && req.method !== 'GET') { dropped = true; res.destroy(); return }
        forward()
      }
    })
    try {
      const viaProxy = new AgentryClient({ baseUrl: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`, token: srv.token, retryDelayMs: 20 })
      const a = await viaProxy.createAgent({ serviceUserId: 'c-retry', name: 'Retried' })
      assert.equal(dropped, true)
      assert.equal(a.serviceUserId, 'c-retry')
      assert.equal((await client.listAgents({ serviceUserId: 'c-retry' })).data.length, 1)
      assert.deepEqual(seen, ['POST', 'POST'])
      // A PUT is not retried: the lost answer surfaces as an error, after one request.
      dropped = false
      seen.length = 0
      await assert.rejects(viaProxy.updateAgent(a.id, { name: 'x' }), TypeError)
      assert.deepEqual(seen, ['PUT'])
    } finally {
      proxy.closeAllConnections()
      await new Promise((resolve) => proxy.close(resolve))
    }
  })

  it('createAgent waits for its earlier attempt still running (409 in progress) instead of throwing', async () => {
    // A proxy that cuts the client off 300 ms into its first attempt, which the server goes on
    // running (its avatar takes 1 s to come): the retry meets that attempt's claim on the key.
    let cut = false
    const proxy = await proxyToServer({
      sent: (_req, res) => {
        if (cut) return
        cut = true
        setTimeout(() => res.destroy(), 300)
      }
    })
    try {
      const viaProxy = new AgentryClient({ baseUrl: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`, token: srv.token, retryDelayMs: 20 })
      const a = await viaProxy.createAgent({ serviceUserId: 'c-waited', name: 'Waited', avatar: `${fx.url}/late.jpg` })
      assert.equal(cut, true)
      assert.equal(a.serviceUserId, 'c-waited')
      assert.notEqual(a.avatar, null)
      assert.equal((await client.listAgents({ serviceUserId: 'c-waited' })).data.length, 1)

      // Past inProgressWaitMs it throws, with the key to call again with.
      cut = false
      const impatient = new AgentryClient({ baseUrl: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`, token: srv.token, retryDelayMs: 20, inProgressWaitMs: 0 })
      const input = { serviceUserId: 'c-impatient', name: 'Impatient', avatar: `${fx.url}/late.jpg` }
      const err = await impatient.createAgent(input).then(() => assert.fail('created at once'), (e: unknown) => e as AgentryError & { idempotencyKey: string })
      assert.equal(err.code, 'idempotency_key_in_progress')
      assert.equal(typeof err.idempotencyKey, 'string')
      await new Promise((resolve) => setTimeout(resolve, 1500))
      const resumed = await client.createAgent(input, { idempotencyKey: err.idempotencyKey })
      assert.equal(resumed.serviceUserId, 'c-impatient')
      assert.equal((await client.listAgents({ serviceUserId: 'c-impatient' })).data.length, 1)
    } finally {
      proxy.closeAllConnections()
      await new Promise((resolve) => proxy.close(resolve))
    }
  })

  it('subscribes to the event stream', async () => {
    const events: AgentEvent[] = []
    const controller = new AbortController()
    const done = client.subscribe((e) => { events.push(e) }, { signal: controller.signal })
    await new Promise((resolve) => setTimeout(resolve, 300))
    const a = await client.createAgent({ serviceUserId: 'c-ev', name: 'Evented' })
    await client.updateAgent(a.id, { status: 'online' })
    const deadline = Date.now() + 5000
    while (events.length < 3 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
    controller.abort()
    await done
    assert.deepEqual(events.map((e) => e.type), ['agent.created', 'agent.updated', 'agent.status_changed'])
    assert.equal(events[2]!.data.agent.status, 'online')
  })
})

describe('typed client: waiting out a 429', () => {
  it('waits for a short Retry-After and retries; a longer one than maxRetryAfterMs is thrown at once', async () => {
    const short = await startTestServer({ RATE_LIMIT_MAX: '1', RATE_LIMIT_WINDOW_MS: '1000' })
    const long = await startTestServer({ RATE_LIMIT_MAX: '1', RATE_LIMIT_WINDOW_MS: '60000' })
    try {
      const c = new AgentryClient({ baseUrl: short.url, token: short.token })
      await c.listAgents()
      // The second read gets 429 with Retry-After: 1, waits, and goes through in the next window.
      assert.deepEqual((await c.listAgents()).data, [])

      const d = new AgentryClient({ baseUrl: long.url, token: long.token })
      await d.listAgents()
      const started = Date.now()
      await assert.rejects(d.listAgents(), (err: unknown) => err instanceof AgentryError && err.status === 429 && err.code === 'rate_limited')
      assert.ok(Date.now() - started < 5000, 'Retry-After: 60 is not slept through')
    } finally {
      await short.close()
      await long.close()
    }
  })
})
