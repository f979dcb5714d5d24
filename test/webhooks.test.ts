import assert from 'node:assert/strict'
import { createHmac } from 'node:crypto'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { after, before, describe, it } from 'node:test'
import pg from 'pg'
import { call, dataDir, killAll, removeDirs, startServe, startTwoInstances, until, type Instances, type Reply, type ServeProcess } from './helpers/process.js'
import { startDnsServer } from './helpers/dns.js'
import { startTestServer, type ApiResponse, type TestServer } from './helpers/server.js'
import { provisionStores, storeLeg, type ProvisionedStores } from './helpers/stores.js'

/**
 * Webhooks as a receiver sees them: endpoints registered through the API, events POSTed to a real
 * HTTP server on loopback that fails, hangs or answers as each test says, signatures checked here
 * against the Standard Webhooks wire format (not with the service's own code). Every wait is bounded.
 */

const WEBHOOKS = '/api/external/v1/webhooks'
const WAIT_MS = 8000
/** Long enough for a delivery that should not happen to show up (EVENTS_POLL_MS=50, retries from 100 ms). */
const QUIET_MS = 600

const sleep = async (ms: number) => { await new Promise((resolve) => setTimeout(resolve, ms)) }
const nowSeconds = () => Math.floor(Date.now() / 1000)

interface Agent {
  id: string
  name: string
  status: string
  [key: string]: unknown
}

interface AgentEvent {
  id: string
  type: string
  createdAt: number
  data: { agent: Agent, changes: Record<string, { from: unknown, to: unknown }> }
}

/** One request the receiver got, and what it answered. */
interface Arrival {
  webhookId: string
  timestamp: string
  signature: string
  contentType: string | undefined
  body: string
  event: AgentEvent
  /** The HTTP status answered, or 'hang' for a request never answered. */
  answer: number | 'hang'
  receivedAt: number
}

/** A status, 'hang' (never answered), or a status answered once `before` is done. */
type Answer = number | 'hang' | { status: number, before: (arrival: Arrival) => Promise<unknown> }

interface Receiver {
  url: string
  arrivals: Arrival[]
  /** How many connections were made to it. */
  connections: () => number
  /** Arrivals answered 2xx, in order. */
  delivered: () => Arrival[]
  close: () => Promise<void>
}

/**
 * A webhook receiver on loopback; answer(n) decides the reply to its n-th request (from 0), and
 * replyBody the bytes of a 2xx reply.
 */
async function startReceiver (answer: (n: number) => Answer = () => 200, replyBody: string | Buffer = 'thanks'): Promise<Receiver> {
  const arrivals: Arrival[] = []
  let connections = 0
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8')
      const reply = answer(arrivals.length)
      const arrival: Arrival = {
        webhookId: String(req.headers['webhook-id']),
        timestamp: String(req.headers['webhook-timestamp']),
        signature: String(req.headers['webhook-signature']),
        contentType: req.headers['content-type'],
        body,
        event: JSON.parse(body) as AgentEvent,
        answer: typeof reply === 'object' ? reply.status : reply,
        receivedAt: Date.now()
      }
      arrivals.push(arrival)
      if (reply === 'hang') return
      const status = typeof reply === 'object' ? reply.status : reply
      const send = () => { res.writeHead(status, { 'content-type': 'text/plain' }).end(status >= 200 && status < 300 ? replyBody : 'not now') }
      if (typeof reply === 'object') void reply.before(arrival).then(send)
      else send()
    })
  })
  server.on('connection', () => { connections++ })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}/hooks/agentry`,
    arrivals,
    connections: () => connections,
    delivered: () => arrivals.filter((a) => typeof a.answer === 'number' && a.answer >= 200 && a.answer < 300),
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => { resolve() }))
    }
  }
}

/**
 * Standard Webhooks, checked from the wire: HMAC-SHA256 keyed with the base64 after `whsec_`, over
 * `${webhook-id}.${webhook-timestamp}.${body}`, sent as `v1,<base64>` (possibly among others, space-separated).
 */
function signatureOf (secret: string, id: string, timestamp: string, body: string): string {
  assert.match(secret, /^whsec_[A-Za-z0-9+/]+={0,2}$/)
  const key = Buffer.from(secret.slice('whsec_'.length), 'base64')
  return `v1,${createHmac('sha256', key).update(`${id}.${timestamp}.${body}`).digest('base64')}`
}

function assertSigned (secret: string, a: Arrival): void {
  assert.match(a.webhookId, /^msg_[0-9a-f]{32}$/)
  assert.match(a.timestamp, /^\d+$/)
  assert.ok(Math.abs(Number(a.timestamp) - Math.floor(a.receivedAt / 1000)) <= 5, `webhook-timestamp ${a.timestamp} is about when it arrived`)
  assert.match(a.contentType ?? '', /^application\/json/)
  assert.ok(a.signature.split(' ').includes(signatureOf(secret, a.webhookId, a.timestamp, a.body)), `signature of ${a.webhookId} verifies`)
  // And the check is a real one: the same signature does not fit a changed body or another id.
  assert.ok(!a.signature.split(' ').includes(signatureOf(secret, a.webhookId, a.timestamp, a.body.replace('"id"', '"Id"'))))
  assert.ok(!a.signature.split(' ').includes(signatureOf(secret, `${a.webhookId}x`, a.timestamp, a.body)))
}

/** The first arrival of each webhook-id, in arrival order. */
function firstArrivals (arrivals: Arrival[]): Arrival[] {
  const seen = new Set<string>()
  return arrivals.filter((a) => { const fresh = !seen.has(a.webhookId); seen.add(a.webhookId); return fresh })
}

function assertIncreasing (ids: string[], what: string): void {
  for (let i = 1; i < ids.length; i++) assert.ok(Number(ids[i]) > Number(ids[i - 1]), `${what} in event id order: ${ids.join(', ')}`)
}

type Call = (method: string, path: string, body?: unknown) => Promise<ApiResponse>

function check (res: ApiResponse | Reply, status = 200): ApiResponse | Reply {
  assert.equal(res.status, status, JSON.stringify(res.body))
  return res
}

/** A widget of the test's own (so endpoints of one test never get another test's events). */
async function widget (srv: TestServer, name: string, scope: 'read' | 'write' = 'write'): Promise<Call> {
  const { token } = await srv.services.tokens.create(name, { scope })
  return async (method, path, body) => await srv.call(method, path, body, { authorization: `Bearer ${token}` })
}

/** The endpoint's delivery log as GET /webhooks/:id/deliveries shows it (`data`). */
type DeliveryLog = ApiResponse['body']

/** Waits (bounded) until the endpoint's delivery log, read through the API, is as `done` wants it; returns it. */
async function untilLog (w: Call, endpointId: string, what: string, done: (log: DeliveryLog) => boolean): Promise<DeliveryLog> {
  return await until(what, async () => {
    const log: DeliveryLog = check(await w('GET', `${WEBHOOKS}/${endpointId}/deliveries`)).body.data
    return done(log) === true ? log : undefined
  }, WAIT_MS)
}

describe('webhooks', () => {
  let srv: TestServer
  const receivers: Receiver[] = []
  const receiver = async (answer?: (n: number) => Answer, replyBody?: string | Buffer) => { const r = await startReceiver(answer, replyBody); receivers.push(r); return r }

  before(async () => {
    srv = await startTestServer({
      WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true',
      WEBHOOK_RETRY_BASE_MS: '100',
      WEBHOOK_RETRY_MAX_MS: '400',
      WEBHOOK_TIMEOUT_MS: '300',
      EVENTS_POLL_MS: '50'
    })
  })
  after(async () => {
    await srv?.close()
    await Promise.allSettled(receivers.map((r) => r.close()))
  })

  it('registers an endpoint (with its secret, shown once), lists endpoints without secrets, deletes them', async () => {
    const w = await widget(srv, 'wh-crud')
    const before = nowSeconds()
    const all = check(await w('POST', WEBHOOKS, { url: 'https://hooks.example.com/agentry?x=1' })).body
    assert.equal(all.status, 200)
    assert.deepEqual(Object.keys(all.data).sort(), ['createdAt', 'eventTypes', 'id', 'secret', 'url'])
    assert.match(all.data.id, /^wh_[0-9a-f]{32}$/)
    assert.equal(all.data.url, 'https://hooks.example.com/agentry?x=1')
    assert.deepEqual(all.data.eventTypes, ['*'])
    assert.match(all.data.secret, /^whsec_[A-Za-z0-9+/]+={0,2}$/)
    assert.ok(Buffer.from(all.data.secret.slice(6), 'base64').length >= 24, 'a key of at least 192 bits')
    assert.ok(all.data.createdAt >= before && all.data.createdAt <= nowSeconds())

    const deletions = check(await w('POST', WEBHOOKS, { url: 'http://hooks.example.com/deleted', eventTypes: ['agent.deleted'] })).body.data
    assert.deepEqual(deletions.eventTypes, ['agent.deleted'])
    assert.notEqual(deletions.secret, all.data.secret)

    const list = check(await w('GET', WEBHOOKS)).body
    assert.equal(list.status, 200)
    const withoutSecret = ({ secret, ...rest }: { id: string, secret: string }) => { assert.ok(secret); return rest }
    assert.deepEqual(
      [...list.data].sort((x: { id: string }, y: { id: string }) => x.id.localeCompare(y.id)),
      [withoutSecret(all.data), withoutSecret(deletions)].sort((x, y) => x.id.localeCompare(y.id))
    )
    assert.ok(!JSON.stringify(list).includes('whsec_'), 'no secret in the list')

    // Another widget sees none of them and cannot delete them.
    const other = await widget(srv, 'wh-crud-other')
    assert.deepEqual(check(await other('GET', WEBHOOKS)).body.data, [])
    assert.equal(check(await other('DELETE', `${WEBHOOKS}/${all.data.id}`), 404).body.error.code, 'not_found')

    const removed = check(await w('DELETE', `${WEBHOOKS}/${all.data.id}`)).body
    assert.deepEqual(removed, { status: 200, data: { id: all.data.id, deleted: true } })
    assert.deepEqual(check(await w('GET', WEBHOOKS)).body.data.map((e: { id: string }) => e.id), [deletions.id])
    assert.equal(check(await w('DELETE', `${WEBHOOKS}/${all.data.id}`), 404).body.error.code, 'not_found')
    assert.equal(check(await w('DELETE', `${WEBHOOKS}/not-an-id`), 404).body.error.code, 'not_found')
    check(await w('DELETE', `${WEBHOOKS}/${deletions.id}`))
  })

  it('refuses URLs that are not http(s) URLs and event types it does not know (400)', async () => {
    const w = await widget(srv, 'wh-invalid')
    for (const url of ['ftp://hooks.example.com/x', 'not a url', '/relative/path', 'javascript:alert(1)', '']) {
      const res = check(await w('POST', WEBHOOKS, { url }), 400)
      assert.equal(res.body.error.code, 'validation_failed', url)
    }
    assert.equal(check(await w('POST', WEBHOOKS, {}), 400).body.error.code, 'validation_failed')
    assert.equal(check(await w('POST', WEBHOOKS, { url: 'https://hooks.example.com/', eventTypes: ['agent.exploded'] }), 400).body.error.code, 'validation_failed')
    assert.deepEqual(check(await w('GET', WEBHOOKS)).body.data, [], 'nothing registered')
  })

  it('a read-only token can list but not register, delete or re-send (403)', async () => {
    const writer = await widget(srv, 'wh-scopes')
    const reader = await widget(srv, 'wh-scopes', 'read')
    const created = check(await writer('POST', WEBHOOKS, { url: 'https://hooks.example.com/scoped' })).body.data
    const refused = check(await reader('POST', WEBHOOKS, { url: 'https://hooks.example.com/other' }), 403)
    assert.equal(refused.body.error.code, 'forbidden')
    assert.equal(check(await reader('DELETE', `${WEBHOOKS}/${created.id}`), 403).body.error.code, 'forbidden')
    assert.equal(check(await reader('POST', `${WEBHOOKS}/${created.id}/deliveries/msg_0/resend`), 403).body.error.code, 'forbidden')
    assert.deepEqual(check(await reader('GET', WEBHOOKS)).body.data.map((e: { id: string }) => e.id), [created.id])
    assert.deepEqual(check(await reader('GET', `${WEBHOOKS}/${created.id}/deliveries`)).body.data, [])
    check(await writer('DELETE', `${WEBHOOKS}/${created.id}`))
  })

  it('refuses loopback and private URLs unless WEBHOOK_ALLOW_PRIVATE_NETWORKS is set (422 webhook_url_forbidden)', async () => {
    const strict = await startTestServer({ EVENTS_POLL_MS: '50' })
    try {
      for (const url of ['http://127.0.0.1:8080/hook', 'http://localhost/hook', 'http://[::1]/hook', 'http://10.1.2.3/hook', 'http://192.168.0.10/hook', 'http://169.254.169.254/latest']) {
        const res = await strict.call('POST', WEBHOOKS, { url })
        assert.equal(res.status, 422, `${url}: ${JSON.stringify(res.body)}`)
        assert.equal(res.body.error.code, 'webhook_url_forbidden', url)
      }
      assert.deepEqual((await strict.call('GET', WEBHOOKS)).body.data, [])
      // A public URL is fine.
      assert.equal((await strict.call('POST', WEBHOOKS, { url: 'https://hooks.example.com/ok' })).status, 200)
    } finally {
      await strict.close()
    }
  })

  it('a receiver that fails, then recovers, gets every event exactly once, in order, signed; retries keep their webhook-id; the log shows it all', async () => {
    const w = await widget(srv, 'wh-retry')
    const FAILURES = 4
    const flaky = await receiver((n) => n < FAILURES ? 500 : 200)
    const deletionsOnly = await receiver()
    const endpoint = check(await w('POST', WEBHOOKS, { url: flaky.url })).body.data
    const deletions = check(await w('POST', WEBHOOKS, { url: deletionsOnly.url, eventTypes: ['agent.deleted'] })).body.data

    const created = check(await w('POST', '/api/external/v1/agents', { serviceUserId: 'wh-1', name: 'Dana' })).body.data
    // While the first delivery is being retried, the log says so.
    await until('two failed attempts', () => flaky.arrivals.length >= 2 ? true : undefined, WAIT_MS)
    const during = check(await w('GET', `${WEBHOOKS}/${endpoint.id}/deliveries`)).body.data
    assert.equal(during.length, 1)
    assert.equal(during[0].status, 'pending')
    assert.equal(during[0].eventType, 'agent.created')
    assert.ok(during[0].attempts.length >= 1 && during[0].attempts.every((a: { statusCode: number }) => a.statusCode === 500), JSON.stringify(during[0].attempts))
    assert.ok(Number.isInteger(during[0].nextAttemptAt), 'a pending delivery says when it is tried next')

    const renamed = check(await w('PUT', `/api/external/v1/agents/${created.id}`, { name: 'Dana Scully' })).body.data
    const online = check(await w('PUT', `/api/external/v1/agents/${created.id}`, { status: 'online' })).body.data
    const deleted = check(await w('DELETE', `/api/external/v1/agents/${created.id}`)).body.data
    const expected = [
      { type: 'agent.created', agent: created, changes: {} },
      { type: 'agent.updated', agent: renamed, changes: { name: { from: 'Dana', to: 'Dana Scully' } } },
      { type: 'agent.updated', agent: online, changes: { status: { from: 'offline', to: 'online' } } },
      { type: 'agent.status_changed', agent: online, changes: { status: { from: 'offline', to: 'online' } } },
      { type: 'agent.deleted', agent: deleted, changes: {} }
    ]

    await until('every event delivered', () => flaky.delivered().length >= expected.length ? true : undefined, WAIT_MS)
    await until('the deletion delivered', () => deletionsOnly.delivered().length >= 1 ? true : undefined, WAIT_MS)
    await sleep(QUIET_MS)

    // Exactly once each (as a success), in order, as the API showed the agent.
    const delivered = flaky.delivered()
    assert.deepEqual(delivered.map((a) => ({ type: a.event.type, agent: a.event.data.agent, changes: a.event.data.changes })), expected)
    assertIncreasing(delivered.map((a) => a.event.id), 'deliveries')
    assert.equal(new Set(delivered.map((a) => a.webhookId)).size, expected.length, 'one webhook-id per event')
    for (const a of flaky.arrivals) assertSigned(endpoint.secret, a)
    assert.equal(flaky.arrivals.length, expected.length + FAILURES, 'no request beyond the failures and one per event')
    // The failed requests were all tries of the first event, with its webhook-id and body.
    for (const a of flaky.arrivals.slice(0, FAILURES)) {
      assert.equal(a.webhookId, delivered[0]!.webhookId)
      assert.equal(a.body, delivered[0]!.body)
    }
    // Nothing of a later event went out before the earlier one got through.
    assertIncreasing(firstArrivals(flaky.arrivals).map((a) => a.event.id), 'first tries')

    // The delivery log: newest event first, each with every attempt.
    const log = check(await w('GET', `${WEBHOOKS}/${endpoint.id}/deliveries`)).body.data
    assert.deepEqual(log.map((d: { id: string }) => d.id), delivered.map((a) => a.webhookId).reverse())
    assert.deepEqual(log.map((d: { eventId: string, eventType: string }) => [d.eventId, d.eventType]), delivered.map((a) => [a.event.id, a.event.type]).reverse())
    for (const d of log) assert.equal(d.status, 'succeeded')
    const first = log.at(-1)
    assert.deepEqual(first.attempts.map((a: { attempt: number, statusCode: number, error: unknown, responseBody: string }) => [a.attempt, a.statusCode, a.error, a.responseBody]), [
      [1, 500, null, 'not now'], [2, 500, null, 'not now'], [3, 500, null, 'not now'], [4, 500, null, 'not now'], [5, 200, null, 'thanks']
    ])
    assert.equal(first.nextAttemptAt, null)
    for (let i = 1; i < first.attempts.length; i++) assert.ok(first.attempts[i].at > first.attempts[i - 1].at, 'attempts in time order, backed off')
    for (const d of log.slice(0, -1)) assert.deepEqual(d.attempts.map((a: { statusCode: number }) => a.statusCode), [200])

    // The endpoint for deletions only got the deletion.
    assert.deepEqual(deletionsOnly.arrivals.map((a) => [a.event.type, a.event.data.agent]), [['agent.deleted', deleted]])
    assertSigned(deletions.secret, deletionsOnly.arrivals[0]!)
    assert.ok(!deletionsOnly.arrivals[0]!.signature.includes(signatureOf(endpoint.secret, deletionsOnly.arrivals[0]!.webhookId, deletionsOnly.arrivals[0]!.timestamp, deletionsOnly.arrivals[0]!.body)), 'each endpoint signs with its own secret')
    const deletionLog = check(await w('GET', `${WEBHOOKS}/${deletions.id}/deliveries`)).body.data
    assert.deepEqual(deletionLog.map((d: { eventType: string, status: string }) => [d.eventType, d.status]), [['agent.deleted', 'succeeded']])

    check(await w('DELETE', `${WEBHOOKS}/${endpoint.id}`))
    check(await w('DELETE', `${WEBHOOKS}/${deletions.id}`))
    assert.equal(check(await w('GET', `${WEBHOOKS}/${endpoint.id}/deliveries`), 404).body.error.code, 'not_found')
  })

  it('a receiver that never answers is timed out (WEBHOOK_TIMEOUT_MS=300) and retried; the log shows the timeouts', async () => {
    const w = await widget(srv, 'wh-timeout')
    const slow = await receiver((n) => n < 2 ? 'hang' : 200)
    const endpoint = check(await w('POST', WEBHOOKS, { url: slow.url })).body.data
    const created = check(await w('POST', '/api/external/v1/agents', { serviceUserId: 'wh-slow', name: 'Slow' })).body.data

    await until('the delivery to get through', () => slow.delivered().length >= 1 ? true : undefined, WAIT_MS)
    await sleep(QUIET_MS)
    assert.equal(slow.arrivals.length, 3)
    assert.deepEqual(slow.arrivals.map((a) => a.answer), ['hang', 'hang', 200])
    assert.equal(new Set(slow.arrivals.map((a) => a.webhookId)).size, 1, 'the same webhook-id on every try')
    for (const a of slow.arrivals) assertSigned(endpoint.secret, a)
    assert.deepEqual(slow.arrivals[2]!.event.data.agent, created)

    await untilLog(w, endpoint.id, 'the success to be logged', (log) => log[0]?.status === 'succeeded')
    const [delivery] = check(await w('GET', `${WEBHOOKS}/${endpoint.id}/deliveries`)).body.data
    assert.equal(delivery.id, slow.arrivals[0]!.webhookId)
    assert.deepEqual(delivery.attempts.map((a: { statusCode: number | null, error: string | null }) => [a.statusCode, a.error]), [
      [null, 'timed out after 300 ms'], [null, 'timed out after 300 ms'], [200, null]
    ])
    for (const a of delivery.attempts.slice(0, 2)) assert.ok(a.durationMs >= 250 && a.durationMs < 2000, `a timed-out attempt took about 300 ms (${a.durationMs})`)
    check(await w('DELETE', `${WEBHOOKS}/${endpoint.id}`))
  })

  it('deleting an endpoint stops its deliveries, retries included', async () => {
    const w = await widget(srv, 'wh-stop')
    const down = await receiver(() => 500)
    const endpoint = check(await w('POST', WEBHOOKS, { url: down.url })).body.data
    check(await w('POST', '/api/external/v1/agents', { serviceUserId: 'wh-stop', name: 'Stop' }))
    await until('a couple of failed tries', () => down.arrivals.length >= 2 ? true : undefined, WAIT_MS)
    // Another widget's token cannot delete it, nor any of its deliveries.
    const other = await widget(srv, 'wh-stop-other')
    assert.equal(check(await other('DELETE', `${WEBHOOKS}/${endpoint.id}`), 404).body.error.code, 'not_found')
    const kept = check(await w('GET', `${WEBHOOKS}/${endpoint.id}/deliveries`)).body.data
    assert.equal(kept.length, 1)
    assert.equal(kept[0].status, 'pending')
    assert.ok(kept[0].attempts.length >= 2, 'its attempts too')
    check(await w('DELETE', `${WEBHOOKS}/${endpoint.id}`))
    await sleep(200) // a try already on the wire may still land
    const settled = down.arrivals.length
    check(await w('POST', '/api/external/v1/agents', { serviceUserId: 'wh-stop-2', name: 'Stop 2' }))
    await sleep(QUIET_MS * 2)
    assert.equal(down.arrivals.length, settled, 'no tries after the endpoint was deleted')
    assert.equal(check(await w('GET', `${WEBHOOKS}/${endpoint.id}/deliveries`), 404).body.error.code, 'not_found')
  })

  // On PostgreSQL writes and an endpoint's deletion overlap. The deletion is held open here, in the
  // database, right after it deleted the endpoint's row: a write to the widget must neither wait
  // for it nor then fail on the new delivery's foreign key; the endpoint simply gets no delivery.
  it('a write while an endpoint is being deleted succeeds at once (PostgreSQL)', {
    skip: process.env.TEST_DATABASE_URL === undefined ? 'SQLite runs one write transaction at a time' : false
  }, async () => {
    const w = await widget(srv, 'wh-deleting')
    const target = srv.services.config.database
    assert.equal(target.kind, 'postgres')
    const agent = check(await w('POST', '/api/external/v1/agents', { serviceUserId: 'wh-deleting', name: 'Deleting' })).body.data
    const endpoint = check(await w('POST', WEBHOOKS, { url: 'http://127.0.0.1:9/gone' })).body.data
    const deletion = new pg.Client({ connectionString: target.kind === 'postgres' ? target.url : '' })
    await deletion.connect()
    try {
      await deletion.query('begin')
      await deletion.query('delete from webhook_deliveries where endpoint_id = $1', [endpoint.id])
      await deletion.query('delete from webhook_endpoints where id = $1', [endpoint.id])
      const write = w('PUT', `/api/external/v1/agents/${agent.id}`, { status: 'online' })
      const outcome = await Promise.race([write, sleep(3000).then(() => 'still waiting' as const)])
      assert.notEqual(outcome, 'still waiting', 'the write waited for the deletion')
      assert.equal(check(outcome as ApiResponse).body.data.status, 'online')
      await deletion.query('commit')
    } finally {
      await deletion.query('rollback').catch(() => {})
      await deletion.end()
    }
    assert.equal(check(await w('GET', `/api/external/v1/agents/${agent.id}`)).body.data.status, 'online')
    check(await w('GET', `${WEBHOOKS}/${endpoint.id}/deliveries`), 404)
  })

  it('deliveries to one endpoint share a kept connection; a long answer closes it (only its first KB is logged)', async () => {
    const w = await widget(srv, 'wh-keepalive')
    const sink = await receiver()
    const endpoint = check(await w('POST', WEBHOOKS, { url: sink.url })).body.data
    for (let i = 0; i < 4; i++) {
      check(await w('POST', '/api/external/v1/agents', { serviceUserId: `wh-kept-${i}`, name: `Kept ${i}` }))
      await until(`delivery ${i + 1}`, () => sink.delivered().length >= i + 1 ? true : undefined, WAIT_MS)
    }
    assert.equal(sink.connections(), 1, 'four deliveries, one after the other, on one connection')
    check(await w('DELETE', `${WEBHOOKS}/${endpoint.id}`))

    // A receiver answering 200 KB: the delivery succeeds, the log keeps the first 1,024 characters,
    // and the next delivery goes on a new connection.
    const chatty = await receiver(() => 200, Buffer.alloc(200 * 1024, 'x'))
    const loud = check(await w('POST', WEBHOOKS, { url: chatty.url })).body.data
    for (let i = 0; i < 2; i++) {
      check(await w('POST', '/api/external/v1/agents', { serviceUserId: `wh-chatty-${i}`, name: `Chatty ${i}` }))
      await until(`delivery ${i + 1}`, () => chatty.delivered().length >= i + 1 ? true : undefined, WAIT_MS)
    }
    const log = await untilLog(w, loud.id, 'both to be logged as sent', (l) => l.length === 2 && l.every((d: { status: string }) => d.status === 'succeeded'))
    for (const d of log) assert.equal(d.attempts[0].responseBody, 'x'.repeat(1024))
    assert.equal(chatty.connections(), 2)
    check(await w('DELETE', `${WEBHOOKS}/${loud.id}`))
  })

  it('a receiver whose answer holds a NUL byte: delivered once and logged (PostgreSQL text cannot hold one), the next event goes too', async () => {
    const w = await widget(srv, 'wh-nul')
    const sink = await receiver(() => 200, Buffer.from('ok\u0000ok'))
    const endpoint = check(await w('POST', WEBHOOKS, { url: sink.url })).body.data
    check(await w('POST', '/api/external/v1/agents', { serviceUserId: 'wh-nul-1', name: 'First' }))
    check(await w('POST', '/api/external/v1/agents', { serviceUserId: 'wh-nul-2', name: 'Second' }))
    const log = await untilLog(w, endpoint.id, 'both deliveries to be logged as succeeded', (l) => l.length === 2 && l.every((d: { status: string }) => d.status === 'succeeded'))
    assert.equal(log[0].attempts[0].responseBody, 'ok\uFFFDok')
    await sleep(QUIET_MS)
    assert.equal(sink.arrivals.length, 2, 'each sent once')
    check(await w('DELETE', `${WEBHOOKS}/${endpoint.id}`))
  })

  it('a delivery that succeeded can be sent again by hand, with the same webhook-id', async () => {
    const w = await widget(srv, 'wh-resend')
    const sink = await receiver()
    const endpoint = check(await w('POST', WEBHOOKS, { url: sink.url })).body.data
    check(await w('POST', '/api/external/v1/agents', { serviceUserId: 'wh-again', name: 'Again' }))
    await until('the delivery', () => sink.delivered().length >= 1 ? true : undefined, WAIT_MS)
    const [delivery] = await untilLog(w, endpoint.id, 'the success to be logged', (log) => log[0]?.status === 'succeeded')
    assert.equal(delivery.id, sink.arrivals[0]!.webhookId)

    const resent = check(await w('POST', `${WEBHOOKS}/${endpoint.id}/deliveries/${delivery.id}/resend`)).body
    assert.deepEqual(resent, { status: 200, data: { id: delivery.id, status: 'pending' } })
    await until('the re-send', () => sink.delivered().length >= 2 ? true : undefined, WAIT_MS)
    await sleep(QUIET_MS)
    assert.equal(sink.arrivals.length, 2, 'sent once more, not more')
    const [original, again] = sink.arrivals as [Arrival, Arrival]
    assert.equal(again.webhookId, original.webhookId)
    assert.equal(again.body, original.body)
    assertSigned(endpoint.secret, again)

    const after = await untilLog(w, endpoint.id, 'the re-send to be logged', (log) => log[0]?.status === 'succeeded' && log[0].attempts.length === 2)
    assert.equal(after.length, 1)
    assert.deepEqual(after[0].attempts.map((a: { attempt: number, statusCode: number }) => [a.attempt, a.statusCode]), [[1, 200], [2, 200]])

    assert.equal(check(await w('POST', `${WEBHOOKS}/${endpoint.id}/deliveries/msg_00000000000000000000000000000000/resend`), 404).body.error.code, 'not_found')
    assert.equal(check(await w('POST', `${WEBHOOKS}/wh_00000000000000000000000000000000/deliveries/${delivery.id}/resend`), 404).body.error.code, 'not_found')
    const other = await widget(srv, 'wh-resend-other')
    assert.equal(check(await other('POST', `${WEBHOOKS}/${endpoint.id}/deliveries/${delivery.id}/resend`), 404).body.error.code, 'not_found')
    check(await w('DELETE', `${WEBHOOKS}/${endpoint.id}`))
  })

  it('a re-send asked for while the delivery is on its way is not lost: it goes again once that attempt ends', async () => {
    const w = await widget(srv, 'wh-resend-in-flight')
    let release = (): void => {}
    const held = new Promise<void>((resolve) => { release = resolve })
    const sink = await receiver((n) => n === 0 ? { status: 200, before: async () => await held } : 200)
    const endpoint = check(await w('POST', WEBHOOKS, { url: sink.url })).body.data
    check(await w('POST', '/api/external/v1/agents', { serviceUserId: 'wh-in-flight', name: 'In flight' }))
    const [first] = await until('the first attempt to arrive', () => sink.arrivals.length >= 1 ? sink.arrivals : undefined, WAIT_MS)
    assert.deepEqual(check(await w('POST', `${WEBHOOKS}/${endpoint.id}/deliveries/${first!.webhookId}/resend`)).body.data, { id: first!.webhookId, status: 'pending' })
    release()
    await until('the re-send', () => sink.arrivals.length >= 2 ? true : undefined, WAIT_MS)
    const log = await untilLog(w, endpoint.id, 'both attempts to be logged', (deliveries) => deliveries[0]?.status === 'succeeded' && deliveries[0].attempts.length === 2)
    assert.deepEqual(log[0].attempts.map((a: { attempt: number, statusCode: number }) => [a.attempt, a.statusCode]), [[1, 200], [2, 200]])
    await sleep(QUIET_MS)
    assert.equal(sink.arrivals.length, 2, 'sent once more, not more')
    assert.equal(sink.arrivals[1]!.webhookId, first!.webhookId)
    check(await w('DELETE', `${WEBHOOKS}/${endpoint.id}`))
  })

  it('a re-send of an older delivery while a newer one is on its way waits for it: one delivery at a time per endpoint', async () => {
    // A receiver that holds its answer for a while: this suite's WEBHOOK_TIMEOUT_MS (300) would end it too soon.
    const patient = await startTestServer({ WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true', WEBHOOK_TIMEOUT_MS: '10000', EVENTS_POLL_MS: '50' })
    try {
      const w = await widget(patient, 'wh-resend-behind')
      let release = (): void => {}
      const held = new Promise<void>((resolve) => { release = resolve })
      // The second request (the second event) is held until the test lets it go.
      const sink = await receiver((n) => n === 1 ? { status: 200, before: async () => await held } : 200)
      const endpoint = check(await w('POST', WEBHOOKS, { url: sink.url })).body.data
      check(await w('POST', '/api/external/v1/agents', { serviceUserId: 'wh-behind-1', name: 'First' }))
      const [first] = await untilLog(w, endpoint.id, 'the first delivery to succeed', (log) => log[0]?.status === 'succeeded')
      check(await w('POST', '/api/external/v1/agents', { serviceUserId: 'wh-behind-2', name: 'Second' }))
      await until('the second delivery to be on its way', () => sink.arrivals.length >= 2 ? true : undefined, WAIT_MS)
      assert.notEqual(sink.arrivals[1]!.webhookId, first.id)

      check(await w('POST', `${WEBHOOKS}/${endpoint.id}/deliveries/${first.id as string}/resend`))
      await sleep(QUIET_MS)
      assert.equal(sink.arrivals.length, 2, 'the re-send is not sent while the newer delivery is still on its way')
      release()
      await until('the re-send', () => sink.arrivals.length >= 3 ? true : undefined, WAIT_MS)
      assert.deepEqual(sink.arrivals.map((a) => a.webhookId), [first.id, sink.arrivals[1]!.webhookId, first.id])
      const log = await untilLog(w, endpoint.id, 'all three attempts to be logged', (deliveries) =>
        deliveries.every((d: { status: string }) => d.status === 'succeeded') && deliveries.reduce((n: number, d: { attempts: unknown[] }) => n + d.attempts.length, 0) === 3)
      assert.deepEqual(log.map((d: { attempts: Array<{ attempt: number }> }) => d.attempts.map((a) => a.attempt)), [[1], [1, 2]])
      check(await w('DELETE', `${WEBHOOKS}/${endpoint.id}`))
    } finally {
      await patient.close()
    }
  })

  it('a delivery whose event is no longer kept cannot be sent again: 404 saying why', async () => {
    const w = await widget(srv, 'wh-resend-purged')
    const sink = await receiver()
    const endpoint = check(await w('POST', WEBHOOKS, { url: sink.url })).body.data
    check(await w('POST', '/api/external/v1/agents', { serviceUserId: 'wh-purged', name: 'Purged' }))
    const [delivery] = await untilLog(w, endpoint.id, 'the success to be logged', (log) => log[0]?.status === 'succeeded')
    // As EVENTS_RETENTION_SECONDS would, once the event is older than that and delivered.
    await srv.services.database.db.deleteFrom('events').where('seq', '=', Number(delivery.eventId)).execute()
    const refused = check(await w('POST', `${WEBHOOKS}/${endpoint.id}/deliveries/${delivery.id as string}/resend`), 404).body.error
    assert.equal(refused.code, 'not_found')
    assert.match(refused.message, /no longer kept/)
    await sleep(QUIET_MS)
    assert.equal(sink.arrivals.length, 1)
    check(await w('DELETE', `${WEBHOOKS}/${endpoint.id}`))
  })

  it('finished deliveries are forgotten with their attempts after EVENTS_RETENTION_SECONDS; pending ones stay', async () => {
    const w = await widget(srv, 'wh-log-retention')
    const sink = await receiver((n) => n === 0 ? 200 : 500)
    const endpoint = check(await w('POST', WEBHOOKS, { url: sink.url })).body.data
    check(await w('POST', '/api/external/v1/agents', { serviceUserId: 'wh-old-1', name: 'Old' }))
    const [done] = await untilLog(w, endpoint.id, 'the first delivery to succeed', (log) => log[0]?.status === 'succeeded')
    check(await w('POST', '/api/external/v1/agents', { serviceUserId: 'wh-old-2', name: 'Retried' }))
    await until('the second delivery to be tried', () => sink.arrivals.length >= 2 ? true : undefined, WAIT_MS)
    // Both finished or last tried longer ago than the retention (7 days here), as if the server had run that long.
    const longAgo = Date.now() - 8 * 86_400_000
    await srv.services.database.db.updateTable('webhook_deliveries').set({ updated_at: longAgo }).where('endpoint_id', '=', endpoint.id).execute()
    const log = await untilLog(w, endpoint.id, 'the finished delivery to be forgotten', (deliveries) => deliveries.length === 1)
    assert.notEqual(log[0].id, done.id)
    assert.equal(log[0].status, 'pending', 'a delivery still being retried stays, with its attempts')
    assert.ok(log[0].attempts.length >= 1)
    const attempts = await srv.services.database.db.selectFrom('webhook_attempts').select('attempt').where('delivery_id', '=', done.id as string).execute()
    assert.deepEqual(attempts, [])
    check(await w('DELETE', `${WEBHOOKS}/${endpoint.id}`))
  })
})

describe('a receiver that takes its whole timeout', () => {
  it('holds up its own endpoint only: another widget\'s delivery goes while it waits', async () => {
    const slow = await startReceiver(() => 'hang')
    const quick = await startReceiver()
    const srv = await startTestServer({ WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true', WEBHOOK_TIMEOUT_MS: '3000', EVENTS_POLL_MS: '50' })
    try {
      const a = await widget(srv, 'wh-slow')
      const b = await widget(srv, 'wh-quick')
      const slowEndpoint = check(await a('POST', WEBHOOKS, { url: slow.url })).body.data
      check(await b('POST', WEBHOOKS, { url: quick.url }))
      check(await a('POST', '/api/external/v1/agents', { serviceUserId: 'wh-slow-1', name: 'Slow' }))
      await until('the slow receiver to be waiting', () => slow.arrivals.length >= 1 ? true : undefined, WAIT_MS)
      check(await b('POST', '/api/external/v1/agents', { serviceUserId: 'wh-quick-1', name: 'Quick' }))
      await until('the other widget\'s delivery', () => quick.delivered().length >= 1 ? true : undefined, WAIT_MS)
      const log = check(await a('GET', `${WEBHOOKS}/${slowEndpoint.id}/deliveries`)).body.data
      assert.deepEqual(log[0].attempts, [], 'delivered while the slow attempt was still on its way (it times out after 3 s)')
    } finally {
      await srv.close()
      await slow.close()
      await quick.close()
    }
  })
})

describe('instances whose clocks differ', () => {
  // Claims on deliveries are set and judged by the database's clock: an instance whose clock runs
  // two minutes ahead would otherwise take a claim in progress (10.3 s here) for run out at once.
  it('an instance whose clock runs ahead does not send a delivery another instance is sending', async () => {
    let release = (): void => {}
    const held = new Promise<void>((resolve) => { release = resolve })
    const sink = await startReceiver((n) => n === 0 ? { status: 200, before: async () => await held } : 200)
    const env = { WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true', WEBHOOK_TIMEOUT_MS: '5000', EVENTS_POLL_MS: '50' }
    const srv = await startTestServer(env)
    let ahead: TestServer | undefined
    try {
      const w = await widget(srv, 'wh-clock')
      const endpoint = check(await w('POST', WEBHOOKS, { url: sink.url })).body.data
      check(await w('POST', '/api/external/v1/agents', { serviceUserId: 'wh-clock-1', name: 'Clock' }))
      await until('the first attempt to be on its way', () => sink.arrivals.length >= 1 ? true : undefined, WAIT_MS)
      // Started once the attempt is on its way, so the first server is the one that took it.
      ahead = await startTestServer({ ...srv.sharedEnv, ...env }, { clock: () => Math.floor(Date.now() / 1000) + 120 })
      await sleep(4 * QUIET_MS)
      assert.equal(sink.arrivals.length, 1, 'not sent again while its attempt is on its way')
      release()
      const [delivery] = await untilLog(w, endpoint.id, 'the delivery to be logged', (log) => log[0]?.status === 'succeeded')
      assert.deepEqual(delivery.attempts.map((a: { attempt: number, statusCode: number }) => [a.attempt, a.statusCode]), [[1, 200]])
      await sleep(QUIET_MS)
      assert.equal(sink.arrivals.length, 1)
    } finally {
      release()
      await ahead?.close()
      await srv.close()
      await sink.close()
    }
  })
})

describe('an endpoint given by host name', () => {
  it('is resolved through DNS_SERVERS at delivery, like avatar hosts (see test/dns.test.ts)', async () => {
    const ns = await startDnsServer({ 'hooks.test': { A: ['127.0.0.1'] } })
    const sink = await startReceiver()
    const srv = await startTestServer({ DNS_SERVERS: ns.server, WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true', EVENTS_POLL_MS: '50' })
    try {
      const w = await widget(srv, 'wh-by-name')
      const url = new URL(sink.url)
      url.hostname = 'hooks.test'
      check(await w('POST', WEBHOOKS, { url: url.href }))
      check(await w('POST', '/api/external/v1/agents', { serviceUserId: 'wh-name', name: 'By name' }))
      await until('the delivery', () => sink.delivered().length >= 1 ? true : undefined, WAIT_MS)
      assert.equal(sink.delivered()[0]!.event.type, 'agent.created')
      assert.ok(ns.queries.includes('hooks.test A'), `queries: ${ns.queries.join(', ')}`)
    } finally {
      await srv.close()
      await sink.close()
      await ns.close()
    }
  })
})

describe('webhook deliveries and shutdown', () => {
  it('shutting down with a backlog does not send all of it first: the rest waits for the next start', async () => {
    const own = await startTestServer({ WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true', EVENTS_POLL_MS: '50' })
    let closed = false
    const sink = await startReceiver(() => ({ status: 200, before: async () => { await sleep(50) } }))
    try {
      const w = await widget(own, 'wh-backlog')
      // Registered after the writes are made: their deliveries queue up, then go out one at a time
      // (an endpoint's deliveries are sent in order), ~50 ms each.
      check(await w('POST', WEBHOOKS, { url: sink.url }))
      for (let i = 0; i < 60; i++) check(await w('POST', '/api/external/v1/agents', { serviceUserId: `backlog-${i}`, name: 'Backlog' }))
      await until('the backlog to start going out', () => sink.arrivals.length >= 2 ? true : undefined, WAIT_MS)
      await own.close()
      closed = true
      const sent = sink.arrivals.length
      assert.ok(sent < 30, `shutdown waited for ${sent} of 60 deliveries`)
    } finally {
      if (!closed) await own.close()
      await sink.close()
    }
  })
})

describe('a delivery whose outcome could not be written down (PostgreSQL)', { skip: process.env.TEST_DATABASE_URL === undefined && 'PostgreSQL only: a row lock held from outside' }, () => {
  it('is sent again and written down then; the endpoint\'s later deliveries are not held up for good', async () => {
    const own = await startTestServer({ WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true', EVENTS_POLL_MS: '50', WEBHOOK_TIMEOUT_MS: '300', DATABASE_STATEMENT_TIMEOUT_MS: '300' })
    const target = own.services.config.database
    const locker = new pg.Client({ connectionString: target.kind === 'postgres' ? target.url : '' })
    await locker.connect()
    // The first arrival is answered 200 while its delivery's row is locked from outside for 1 s:
    // the service's write of the outcome waits past its statement timeout and fails.
    const sink = await startReceiver((n) => n === 0
      ? {
          status: 200,
          before: async (arrival) => {
            await locker.query('begin')
            await locker.query('select 1 from webhook_deliveries where id = $1 for no key update', [arrival.webhookId])
            setTimeout(() => { void locker.query('rollback') }, 1000)
          }
        }
      : 200)
    try {
      const w = await widget(own, 'wh-unwritten')
      const endpoint = check(await w('POST', WEBHOOKS, { url: sink.url })).body.data
      check(await w('POST', '/api/external/v1/agents', { serviceUserId: 'unwritten-1', name: 'First' }))
      await until('the first arrival', () => sink.arrivals.length >= 1 ? true : undefined, WAIT_MS)
      check(await w('POST', '/api/external/v1/agents', { serviceUserId: 'unwritten-2', name: 'Second' }))
      // Sent again once its claim runs out (WEBHOOK_TIMEOUT_MS + 5 s), then the next one.
      await until('the later event to arrive', () => new Set(sink.arrivals.map((a) => a.webhookId)).size >= 2 ? true : undefined, 15_000)
      const log = await untilLog(w, endpoint.id, 'both deliveries to be logged as sent', (deliveries) => deliveries.length === 2 && deliveries.every((d: { status: string }) => d.status === 'succeeded'))
      const first = log[1]
      assert.equal(first.id, sink.arrivals[0]!.webhookId)
      assert.deepEqual(first.attempts.map((a: { attempt: number, statusCode: number }) => [a.attempt, a.statusCode]), [[1, 200]], 'the attempt whose outcome was lost is not in the log; the one after it is')
    } finally {
      await locker.end()
      await own.close()
      await sink.close()
    }
  })
})

/** Settings for spawned `agentry serve` processes that deliver to a loopback receiver, quickly. */
const WEBHOOK_SETTINGS = {
  WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true',
  WEBHOOK_RETRY_BASE_MS: '100',
  WEBHOOK_RETRY_MAX_MS: '300',
  WEBHOOK_TIMEOUT_MS: '1000',
  EVENTS_POLL_MS: '50'
}

function serveEnv (stores: ProvisionedStores, token: string): Record<string, string> {
  return {
    ...stores.env,
    DATA_DIR: dataDir(),
    BOOTSTRAP_TOKEN: token,
    STATIC_BASE_URL: 'http://cdn.example.test/static',
    ...WEBHOOK_SETTINGS
  }
}

function apiCaller (token: string) {
  return async (p: ServeProcess, method: string, path: string, body?: unknown): Promise<Reply> =>
    await call(`${p.url}/api/external/v1${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) })
    })
}

/**
 * Serve processes on a store of their own for one suite: the store made before it, and after it
 * every process stopped (woken first, if a test froze it), the receiver closed, the store dropped.
 */
function serveSuite () {
  let receiver: Receiver | undefined
  const suite = {
    stores: undefined as unknown as ProvisionedStores,
    procs: [] as ServeProcess[],
    /** The suite's receiver, closed after it. */
    track: (r: Receiver): Receiver => { receiver = r; return r }
  }
  before(async () => { suite.stores = await provisionStores() })
  after(async () => {
    for (const p of suite.procs) p.child.kill('SIGCONT')
    await Promise.allSettled(suite.procs.map((p) => p.stop()))
    killAll()
    await receiver?.close()
    await suite.stores?.drop()
    removeDirs()
  })
  return suite
}

describe(`webhooks survive a restart in the middle of retries (${storeLeg()})`, () => {
  const TOKEN = 'webhooks-restart-token-0123456789'
  const via = apiCaller(TOKEN)
  const suite = serveSuite()

  it('every event arrives, in order, after the process is stopped mid-retry and another one starts on the same store', async () => {
    let failing = true
    const receiver = suite.track(await startReceiver(() => failing ? 503 : 200))
    const env = serveEnv(suite.stores, TOKEN)
    const first = await startServe(env, 20_000)
    suite.procs.push(first)

    const endpoint = check(await via(first, 'POST', '/webhooks', { url: receiver.url })).body.data
    const agents: Agent[] = []
    for (let i = 0; i < 3; i++) agents.push(check(await via(first, 'POST', '/agents', { serviceUserId: `restart-${i}`, name: `Restart ${i}` })).body.data)
    check(await via(first, 'PUT', `/agents/${agents[0]!.id}`, { name: 'Restart zero' }))
    check(await via(first, 'DELETE', `/agents/${agents[1]!.id}`))
    const expectedTypes = ['agent.created', 'agent.created', 'agent.created', 'agent.updated', 'agent.deleted']

    await until('a few failed tries', () => receiver.arrivals.length >= 3 ? true : undefined, WAIT_MS)
    assert.equal(await first.stop(), 0, 'a clean stop')
    const triedBeforeStop = receiver.arrivals.length
    assert.equal(receiver.delivered().length, 0)
    assert.equal(new Set(receiver.arrivals.map((a) => a.webhookId)).size, 1, 'only the first event was tried while it failed')

    const second = await startServe(env, 20_000)
    suite.procs.push(second)
    failing = false
    await until('every event delivered', () => new Set(receiver.delivered().map((a) => a.webhookId)).size >= expectedTypes.length ? true : undefined, WAIT_MS)
    await sleep(QUIET_MS)

    const arrivals = receiver.arrivals
    assert.ok(arrivals.length > triedBeforeStop)
    for (const a of arrivals) assertSigned(endpoint.secret, a)
    // Duplicates are allowed only as re-sends of one delivery: same webhook-id, same body.
    const bodies = new Map<string, string>()
    for (const a of arrivals) {
      assert.equal(bodies.get(a.webhookId) ?? a.body, a.body, `webhook-id ${a.webhookId} always carries the same event`)
      bodies.set(a.webhookId, a.body)
    }
    const firsts = firstArrivals(arrivals)
    assert.deepEqual(firsts.map((a) => a.event.type), expectedTypes)
    assertIncreasing(firsts.map((a) => a.event.id), 'first arrivals')
    assert.deepEqual(firsts.map((a) => a.event.data.agent.id), [agents[0]!.id, agents[1]!.id, agents[2]!.id, agents[0]!.id, agents[1]!.id])

    const log = check(await via(second, 'GET', `/webhooks/${endpoint.id}/deliveries`)).body.data
    assert.deepEqual(new Set(log.map((d: { id: string }) => d.id)), new Set(bodies.keys()), 'the distinct webhook-ids are the deliveries')
    for (const d of log) assert.equal(d.status, 'succeeded', JSON.stringify(d))
    const head = log.find((d: { id: string }) => d.id === firsts[0]!.webhookId)
    assert.ok(head.attempts.length >= triedBeforeStop + 1)
    assert.ok(head.attempts.slice(0, triedBeforeStop).every((a: { statusCode: number }) => a.statusCode === 503), JSON.stringify(head.attempts))
    assert.equal(head.attempts.at(-1).statusCode, 200)
  })
})

describe(`an instance that stalls past its claim on a delivery (${storeLeg()})`, () => {
  const TOKEN = 'webhooks-stall-token-0123456789'
  const via = apiCaller(TOKEN)
  const suite = serveSuite()

  it('another instance sends it once the claim runs out; the stalled attempt, when it ends, is logged too and does not undo the other\'s', async () => {
    // WEBHOOK_TIMEOUT_MS=3000: a claim runs out 8 s after it was taken.
    const env = { ...serveEnv(suite.stores, TOKEN), WEBHOOK_TIMEOUT_MS: '3000' }
    const first = await startServe(env, 20_000)
    suite.procs.push(first)
    let releaseSecond = (): void => {}
    const secondHeld = new Promise<void>((resolve) => { releaseSecond = resolve })
    // The first request's sender (the only instance yet) is frozen as it arrives, as by a long GC
    // pause or a VM stolen away; its answer waits for it. The second request (the other instance's,
    // once the first's claim ran out) is held while the first comes back to life.
    const receiver = suite.track(await startReceiver((n) => n === 0
      ? { status: 200, before: async () => { first.child.kill('SIGSTOP') } }
      : n === 1 ? { status: 200, before: async () => await secondHeld } : 200))
    const endpoint = check(await via(first, 'POST', '/webhooks', { url: receiver.url })).body.data
    check(await via(first, 'POST', '/agents', { serviceUserId: 'stalled', name: 'Stalled' }))
    await until('the first attempt to arrive', () => receiver.arrivals.length >= 1 ? true : undefined, WAIT_MS)
    const second = await startServe(env, 20_000)
    suite.procs.push(second)
    await until('the other instance to send it once the claim ran out', () => receiver.arrivals.length >= 2 ? true : undefined, 15_000)

    // The first comes back while the second's attempt is on its way: it ends its own (its answer
    // came long ago: timed out) and writes it down, and must leave the delivery to the second.
    first.child.kill('SIGCONT')
    await until('the stalled attempt to be logged', async () => {
      const [d] = check(await via(second, 'GET', `/webhooks/${endpoint.id}/deliveries`)).body.data
      return d?.attempts.length === 1 ? true : undefined
    }, WAIT_MS)
    await sleep(2 * QUIET_MS)
    assert.equal(receiver.arrivals.length, 2, 'not sent a third time while the second instance\'s attempt is on its way')
    const [meanwhile] = check(await via(second, 'GET', `/webhooks/${endpoint.id}/deliveries`)).body.data
    assert.equal(meanwhile.status, 'pending')

    releaseSecond()
    const log = await until('the second attempt to be logged', async () => {
      const deliveries = check(await via(second, 'GET', `/webhooks/${endpoint.id}/deliveries`)).body.data
      return deliveries[0]?.status === 'succeeded' ? deliveries : undefined
    }, WAIT_MS)
    await sleep(QUIET_MS)
    assert.equal(receiver.arrivals.length, 2, 'sent twice: once by each instance, not more')
    assert.equal(receiver.arrivals[1]!.webhookId, receiver.arrivals[0]!.webhookId)
    assert.equal(log.length, 1)
    assert.deepEqual(log[0].attempts.map((a: { attempt: number, statusCode: number | null }) => [a.attempt, a.statusCode]), [[1, null], [2, 200]])
  })
})

describe(`webhooks from two instances on one store (${storeLeg()})`, () => {
  const TOKEN = 'webhooks-instances-token-0123456789'
  const via = apiCaller(TOKEN)
  let instances: Instances
  let receiver: Receiver | undefined
  let a: ServeProcess
  let b: ServeProcess

  before(async () => {
    instances = await startTwoInstances(TOKEN, WEBHOOK_SETTINGS)
    ;({ a, b } = instances)
  })
  after(async () => {
    await instances?.stop()
    await receiver?.close()
  })

  it('each delivery is sent by one instance only: exactly one arrival per webhook-id', async () => {
    receiver = await startReceiver()
    const endpoint = check(await via(a, 'POST', '/webhooks', { url: receiver.url })).body.data
    const N = 10
    for (let i = 0; i < N; i++) {
      const created = check(await via(i % 2 === 0 ? a : b, 'POST', '/agents', { serviceUserId: `pair-${i}`, name: `Pair ${i}` })).body.data
      check(await via(i % 2 === 0 ? b : a, 'PUT', `/agents/${created.id}`, { name: `Pair ${i} renamed` }))
    }
    await until('every event delivered', () => receiver!.arrivals.length >= 2 * N ? true : undefined, WAIT_MS)
    await sleep(QUIET_MS)

    const counts = new Map<string, number>()
    for (const x of receiver.arrivals) counts.set(x.webhookId, (counts.get(x.webhookId) ?? 0) + 1)
    assert.equal(counts.size, 2 * N)
    assert.deepEqual([...counts.values()].filter((n) => n !== 1), [], 'no delivery sent twice')
    assert.equal(receiver.arrivals.length, 2 * N)
    for (const x of receiver.arrivals) assertSigned(endpoint.secret, x)
    assertIncreasing(receiver.arrivals.map((x) => x.event.id), 'arrivals')
    assert.deepEqual(receiver.arrivals.map((x) => x.event.type), Array.from({ length: N }, () => ['agent.created', 'agent.updated']).flat())

    for (const instance of [a, b]) {
      const log = check(await via(instance, 'GET', `/webhooks/${endpoint.id}/deliveries`)).body.data
      assert.equal(log.length, 2 * N)
      for (const d of log) assert.deepEqual([d.status, d.attempts.length], ['succeeded', 1], JSON.stringify(d))
    }
  })
})
