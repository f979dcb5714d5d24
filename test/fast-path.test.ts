import assert from 'node:assert/strict'
import http from 'node:http'
import { after, before, describe, it } from 'node:test'
import { sql } from 'kysely'
import { headerPairs, holdDatabaseLock, metricValue, rawGet, startTestServer, TEST_TOKEN, untilWaitingForLock, type RawResponse, type TestServer } from './helpers/server.js'
import { storeLeg } from './helpers/stores.js'

/**
 * GET /agents/:id with a known token is answered ahead of Fastify (src/http/fast-path.ts): from
 * memory when the SQLite read cache has the agent, else read from the database first; and so is
 * GET /agents when the SQLite read cache holds the whole answer. A client
 * must not be able to tell: the same status, the same headers in the same order, the same bytes
 * (errors included), the same rate limit, counted in the same metrics. A query string sends the
 * very same request the usual way, so the two can be compared side by side.
 */

const onSqlite = storeLeg().startsWith('sqlite')

/** A GET with the test token unless the headers give another Authorization. */
async function get (url: string, headers: Record<string, string> = {}): Promise<RawResponse> {
  return await rawGet(url, { authorization: `Bearer ${TEST_TOKEN}`, ...headers })
}

const pairs = headerPairs

/** The same answer both ways: status, headers in the same order with the same values, body. */
function sameAnswer (fast: RawResponse, usual: RawResponse, status: number): void {
  assert.equal(fast.status, status)
  assert.equal(usual.status, status)
  assert.deepEqual(fast.body, usual.body)
  const f = pairs(fast)
  const u = pairs(usual)
  assert.deepEqual(f.map(([name]) => name), u.map(([name]) => name), 'the same headers, in the same order')
  for (const [i, [name, value]] of f.entries()) {
    if (name === 'x-request-id' || name === 'date') continue
    // The usual request came one later in the same rate-limit window.
    if (name === 'ratelimit-remaining') assert.equal(Number(value), Number(u[i]?.[1]) + 1)
    else assert.equal(value, u[i]?.[1], name)
  }
}

describe(`GET /agents/:id answered ahead of the framework (${storeLeg()})`, () => {
  let srv: TestServer
  let id: string
  before(async () => {
    srv = await startTestServer({ RATE_LIMIT_MAX: '1000' })
    const res = await srv.call('POST', '/agents', { serviceUserId: 'fast-1', name: 'Fast' })
    assert.equal(res.status, 200)
    id = res.body.data.id as string
    // On SQLite the first read leaves the agent in the read cache.
    assert.equal((await srv.call('GET', `/agents/${id}`)).status, 200)
  })
  after(async () => { await srv.close() })

  it('answers exactly what the usual way answers: status, headers in order, body', async () => {
    const before = await metricValue(srv, 'agentry_http_fast_answers_total')
    const fast = await get(`${srv.api}/agents/${id}`)
    assert.equal(await metricValue(srv, 'agentry_http_fast_answers_total'), before + 1, 'answered ahead of the framework')
    const usual = await get(`${srv.api}/agents/${id}?usual=1`)
    assert.equal(await metricValue(srv, 'agentry_http_fast_answers_total'), before + 1, 'a query string goes the usual way')

    sameAnswer(fast, usual, 200)
    assert.deepEqual(pairs(fast).map(([name]) => name), ['x-request-id', 'ratelimit-limit', 'ratelimit-remaining', 'ratelimit-reset', 'etag', 'content-type', 'content-length', 'date', 'connection', 'keep-alive'])
    assert.deepEqual(JSON.parse(fast.body.toString()), { status: 200, data: (await srv.call('GET', `/agents/${id}?usual=2`)).body.data })
  })

  it('sends a name beyond ASCII as the usual way does, its length counted in bytes', async () => {
    const name = 'Zoë Ångström 李雷 🙂'
    const created = await srv.call('POST', '/agents', { serviceUserId: 'fast-utf8', name })
    assert.equal(created.status, 200)
    const utf8 = created.body.data.id as string
    assert.equal((await srv.call('GET', `/agents/${utf8}`)).status, 200)
    const before = await metricValue(srv, 'agentry_http_fast_answers_total')
    const fast = await get(`${srv.api}/agents/${utf8}`)
    assert.equal(await metricValue(srv, 'agentry_http_fast_answers_total'), before + 1, 'answered ahead of the framework')
    sameAnswer(fast, await get(`${srv.api}/agents/${utf8}?usual=1`), 200)
    assert.equal(pairs(fast).find(([n]) => n === 'content-length')?.[1], String(fast.body.length))
    assert.equal(JSON.parse(fast.body.toString('utf8')).data.name, name)
  })

  it('answers If-None-Match with the current ETag with a bare 304, as the usual way does', async () => {
    const etag = pairs(await get(`${srv.api}/agents/${id}`)).find(([n]) => n === 'etag')?.[1] ?? ''
    const before = await metricValue(srv, 'agentry_http_fast_answers_total')
    const fast = await get(`${srv.api}/agents/${id}`, { 'if-none-match': etag })
    assert.equal(await metricValue(srv, 'agentry_http_fast_answers_total'), before + 1, 'answered ahead of the framework')
    const usual = await get(`${srv.api}/agents/${id}?usual=1`, { 'if-none-match': etag })
    for (const res of [fast, usual]) {
      assert.equal(res.status, 304)
      assert.equal(res.body.length, 0)
      assert.deepEqual(pairs(res).map(([n]) => n), ['x-request-id', 'ratelimit-limit', 'ratelimit-remaining', 'ratelimit-reset', 'etag', 'date', 'connection', 'keep-alive'],
        'no Content-Type or Content-Length on a 304')
      assert.equal(pairs(res).find(([n]) => n === 'etag')?.[1], etag)
    }
    // Another ETag (or a weak form of this one): the whole agent, or a 304 as If-None-Match compares weakly.
    assert.equal((await get(`${srv.api}/agents/${id}`, { 'if-none-match': '"something-else"' })).status, 200)
    assert.equal((await get(`${srv.api}/agents/${id}`, { 'if-none-match': `W/${etag}` })).status, 304)
  })

  it('echoes a usable X-Request-Id and makes one up otherwise; a trailing slash is the same path', async () => {
    const tagged = await get(`${srv.api}/agents/${id}/`, { 'x-request-id': 'fast-req-1' })
    assert.equal(tagged.status, 200)
    assert.equal(pairs(tagged).find(([n]) => n === 'x-request-id')?.[1], 'fast-req-1')
    const unusable = await get(`${srv.api}/agents/${id}`, { 'x-request-id': 'has spaces' })
    assert.match(pairs(unusable).find(([n]) => n === 'x-request-id')?.[1] ?? '', /^[0-9a-f-]{36}$/)
  })

  it('is counted in the request metrics under the route, like any answer', async () => {
    const name = 'agentry_http_requests_total{method="GET",route="/api/external/v1/agents/:id",status_code="200"}'
    const before = await metricValue(srv, name)
    for (let i = 0; i < 3; i++) assert.equal((await get(`${srv.api}/agents/${id}`)).status, 200)
    assert.equal(await metricValue(srv, name), before + 3)
  })

  it('shows a write at once, and leaves what it cannot answer to the usual way', async () => {
    const put = await srv.call('PUT', `/agents/${id}`, { status: 'online' })
    assert.equal(put.status, 200)
    const read = await get(`${srv.api}/agents/${id}`)
    assert.equal(JSON.parse(read.body.toString()).data.status, 'online')
    assert.equal(pairs(read).find(([n]) => n === 'etag')?.[1], put.headers.get('etag'))

    // Unknown agent, bad token, no token, HEAD, If-None-Match: each answered as the API documents.
    assert.equal((await get(`${srv.api}/agents/00000000-0000-0000-0000-000000000000`)).status, 404)
    assert.equal((await get(`${srv.api}/agents/${id}`, { authorization: 'Bearer not-a-token' })).status, 401)
    const etag = pairs(read).find(([n]) => n === 'etag')?.[1] ?? ''
    assert.equal((await get(`${srv.api}/agents/${id}`, { 'if-none-match': etag })).status, 304)
    const head = await new Promise<number>((resolve, reject) => {
      http.request(`${srv.api}/agents/${id}`, { method: 'HEAD', headers: { authorization: `Bearer ${TEST_TOKEN}` } }, (res) => { res.resume(); resolve(res.statusCode ?? 0) }).on('error', reject).end()
    })
    assert.equal(head, 200)

    // A path shaped like an agent's that is a route of its own is that route's.
    const before = await metricValue(srv, 'agentry_http_fast_answers_total')
    const availability = await get(`${srv.api}/agents/availability`)
    assert.equal(availability.status, 200)
    assert.deepEqual(Object.keys(JSON.parse(availability.body.toString()).data).sort(), ['available', 'online'])
    assert.equal(await metricValue(srv, 'agentry_http_fast_answers_total'), before)
  })

  it('answers the whole list kept in memory as the usual way answered it, once nothing was written since (PostgreSQL: once its check finds it so)', async () => {
    // On PostgreSQL the first list of a process is not kept (CheckedLists): this is it, if no test listed before.
    assert.equal((await get(`${srv.api}/agents?limit=1`)).status, 200)
    assert.equal((await srv.call('POST', '/agents', { serviceUserId: 'fast-list', name: 'Listed' })).status, 200)
    const requests = 'agentry_http_requests_total{method="GET",route="/api/external/v1/agents",status_code="200"}'
    for (const path of ['/agents', '/agents/']) {
      const before = await metricValue(srv, 'agentry_http_fast_answers_total')
      const countedBefore = await metricValue(srv, requests)
      // The first after a write is read the usual way, and kept; the second is the one kept.
      const usual = await get(`${srv.api}${path}`)
      assert.equal(await metricValue(srv, 'agentry_http_fast_answers_total'), before, 'the first one goes the usual way')
      const fast = await get(`${srv.api}${path}`)
      assert.equal(await metricValue(srv, 'agentry_http_fast_answers_total'), before + 1, 'the second answered ahead of the framework')
      assert.equal(await metricValue(srv, requests), countedBefore + 2, 'both counted under the route')
      // Arguments swapped: here the usual answer came first.
      sameAnswer(usual, fast, 200)
      assert.deepEqual(pairs(fast).map(([name]) => name), ['x-request-id', 'ratelimit-limit', 'ratelimit-remaining', 'ratelimit-reset', 'content-type', 'content-length', 'date', 'connection', 'keep-alive'])
      assert.ok((JSON.parse(fast.body.toString()).data as Array<{ name: string }>).some((a) => a.name === 'Listed'))
    }
    // A query string, or a write since (on PostgreSQL found by the check, then handed to the usual way): the usual way.
    const before = await metricValue(srv, 'agentry_http_fast_answers_total')
    assert.equal((await get(`${srv.api}/agents?status=offline`)).status, 200)
    assert.equal((await get(`${srv.api}/agents?status=offline`)).status, 200)
    assert.equal((await srv.call('POST', '/agents', { serviceUserId: 'fast-list-2', name: 'Listed too' })).status, 200)
    const after = await get(`${srv.api}/agents`)
    assert.ok((JSON.parse(after.body.toString()).data as Array<{ name: string }>).some((a) => a.name === 'Listed too'))
    assert.equal(await metricValue(srv, 'agentry_http_fast_answers_total'), before)
  })

  it('reads an agent it does not hold in memory, and answers a missing one as the usual way does', async () => {
    const created = await srv.call('POST', '/agents', { serviceUserId: 'fast-unread', name: 'Unread' })
    const unread = created.body.data.id as string
    const before = await metricValue(srv, 'agentry_http_fast_answers_total')
    const fast = await get(`${srv.api}/agents/${unread}`)
    assert.equal(await metricValue(srv, 'agentry_http_fast_answers_total'), before + 1, 'answered ahead of the framework')
    assert.equal(fast.status, 200)
    assert.deepEqual(JSON.parse(fast.body.toString()).data, created.body.data)
    assert.equal(pairs(fast).find(([n]) => n === 'etag')?.[1], created.headers.get('etag'))

    const missing = '00000000-0000-0000-0000-000000000000'
    const fastMissing = await get(`${srv.api}/agents/${missing}`)
    assert.equal(await metricValue(srv, 'agentry_http_fast_answers_total'), before + 2, 'a 404 too')
    const usualMissing = await get(`${srv.api}/agents/${missing}?usual=1`)
    assert.equal(await metricValue(srv, 'agentry_http_fast_answers_total'), before + 2)
    sameAnswer(fastMissing, usualMissing, 404)
    assert.deepEqual(pairs(fastMissing).map(([name]) => name), ['x-request-id', 'ratelimit-limit', 'ratelimit-remaining', 'ratelimit-reset', 'content-type', 'content-length', 'date', 'connection', 'keep-alive'])
    assert.equal(JSON.parse(fastMissing.body.toString()).error.code, 'not_found')
  })

  it('answers a read the database fails with the same 500 envelope as the usual way', async () => {
    const { db } = srv.services.database
    // The database itself fails the read: its table is away for a moment (a fresh database per test server).
    await sql`alter table agents rename to agents_away`.execute(db)
    let fast: RawResponse
    let usual: RawResponse
    try {
      const unknown = '00000000-0000-0000-0000-00000000beef'
      const before = await metricValue(srv, 'agentry_http_fast_answers_total')
      fast = await get(`${srv.api}/agents/${unknown}`)
      assert.equal(await metricValue(srv, 'agentry_http_fast_answers_total'), before + 1, 'answered ahead of the framework')
      usual = await get(`${srv.api}/agents/${unknown}?usual=1`)
    } finally {
      await sql`alter table agents_away rename to agents`.execute(db)
    }
    sameAnswer(fast, usual, 500)
    assert.equal(JSON.parse(fast.body.toString()).error.code, 'internal_error')
    assert.doesNotMatch(fast.body.toString(), /agents_away|relation|table/i, 'nothing of the internals')
    // And the next read is answered again.
    assert.equal((await get(`${srv.api}/agents/${id}`)).status, 200)
  })

  it('shows a change made by another writer at once on PostgreSQL, where every read goes to the database', { skip: onSqlite && 'SQLite: the read cache sees other writers through data_version (test/read-cache.test.ts)' }, async () => {
    assert.equal((await get(`${srv.api}/agents/${id}`)).status, 200)
    // Another instance's write, as far as this one can tell: straight into the database.
    await sql`update agents set name = 'Changed elsewhere', version = version + 1 where id = ${id}`.execute(srv.services.database.db)
    const read = await get(`${srv.api}/agents/${id}`)
    assert.equal(JSON.parse(read.body.toString()).data.name, 'Changed elsewhere')
  })

  it('on PostgreSQL sends a kept list only after its check, and hands one that changed to the usual way, counted once', { skip: onSqlite && 'SQLite: lists are kept while nothing is written (test/read-cache.test.ts)' }, async () => {
    const nameIn = (res: { body: Buffer }): string | undefined => (JSON.parse(res.body.toString()).data as Array<{ id: string, name: string }>).find((a) => a.id === id)?.name
    const remaining = (res: Awaited<ReturnType<typeof get>>): number => Number(pairs(res).find(([n]) => n === 'ratelimit-remaining')?.[1])
    for (let i = 0; i < 3; i++) assert.equal((await get(`${srv.api}/agents`)).status, 200)
    const before = await metricValue(srv, 'agentry_http_fast_answers_total')
    const kept = await get(`${srv.api}/agents`)
    assert.equal(await metricValue(srv, 'agentry_http_fast_answers_total'), before + 1, 'answered ahead of the framework')
    // Another instance's write, or one by hand: no version bump, nothing this instance saw.
    await sql`update agents set name = 'Listed elsewhere' where id = ${id}`.execute(srv.services.database.db)
    const changed = await get(`${srv.api}/agents`)
    assert.equal(nameIn(changed), 'Listed elsewhere')
    assert.equal(remaining(changed), remaining(kept) - 1, 'counted against the rate limit once')
    assert.equal(await metricValue(srv, 'agentry_http_fast_answers_total'), before + 1, 'the changed list went the usual way')
    sameAnswer(changed, await get(`${srv.api}/agents`), 200)
    assert.equal(await metricValue(srv, 'agentry_http_fast_answers_total'), before + 2, 'and is kept again')
  })
})

describe(`GET /agents/:id ahead of the framework, under a rate limit (${storeLeg()})`, () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer({ RATE_LIMIT_MAX: '6', RATE_LIMIT_WINDOW_MS: '60000' }) })
  after(async () => { await srv.close() })

  it('counts against the same limit, and the request past it is refused with 429', async () => {
    const created = await srv.call('POST', '/agents', { serviceUserId: 'fast-limit', name: 'Limited' })
    assert.equal(created.headers.get('ratelimit-remaining'), '5')
    const before = await metricValue(srv, 'agentry_http_fast_answers_total')
    const remaining: string[] = []
    for (let i = 0; i < 5; i++) {
      const res = await get(`${srv.api}/agents/${created.body.data.id as string}`)
      assert.equal(res.status, 200)
      remaining.push(pairs(res).find(([n]) => n === 'ratelimit-remaining')?.[1] ?? '')
    }
    assert.deepEqual(remaining, ['4', '3', '2', '1', '0'], 'each read counted once, whichever way it went')
    assert.equal(await metricValue(srv, 'agentry_http_fast_answers_total'), before + 5, 'all were answered ahead of the framework')
    const refused = await get(`${srv.api}/agents/${created.body.data.id as string}`)
    assert.equal(refused.status, 429)
    assert.equal(JSON.parse(refused.body.toString()).error.code, 'rate_limited')
    assert.ok(pairs(refused).some(([n]) => n === 'retry-after'))
  })
})

/**
 * Holds `agents` locked from another connection (as a long migration would) until `whileHeld` is
 * done, and returns what `started` got. `started` sends a GET /agents whose list is kept; the lock is
 * held until that list's check (the statement that reads the rows' tags, `ctid || xmin`) waits for it
 * in the database, then until `whileHeld` is done.
 */
async function withAgentsLocked (srv: TestServer, started: () => Promise<RawResponse>, whileHeld: () => Promise<void>): Promise<RawResponse> {
  const lock = await holdDatabaseLock(srv, { table: 'agents', mode: 'ACCESS EXCLUSIVE' })
  let request: Promise<RawResponse>
  try {
    request = started()
    await untilWaitingForLock(srv, { statement: 'xmin' })
    await whileHeld()
  } finally {
    await lock.release()
  }
  return await request
}

describe(`GET /agents kept on PostgreSQL, its limit reached by other requests during its check (${storeLeg()})`, () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer({ RATE_LIMIT_MAX: '8', RATE_LIMIT_WINDOW_MS: '60000' }) })
  after(async () => { await srv.close() })

  it('is refused with 429 like any request past the limit, and counted once', { skip: onSqlite && 'SQLite: a kept list is sent at once, with no check to wait for' }, async () => {
    assert.equal((await srv.call('POST', '/agents', { serviceUserId: 'held-list', name: 'Held' })).status, 200)
    // The first list of a process is not kept; the third is, and the fourth is answered ahead of the framework.
    for (let i = 0; i < 3; i++) assert.equal((await get(`${srv.api}/agents`)).status, 200)
    const refusedSeries = `agentry_http_requests_total{method="GET",route="/api/external/v1/agents",status_code="429"}`
    const fastBefore = await metricValue(srv, 'agentry_http_fast_answers_total')
    const refusedBefore = await metricValue(srv, refusedSeries)
    const res = await withAgentsLocked(srv, async () => await get(`${srv.api}/agents`), async () => {
      // Meanwhile the same token's other requests (which read nothing of agents) use up its limit.
      const statuses: number[] = []
      for (let i = 0; i < 4; i++) statuses.push((await get(`${srv.api}/agents?limit=none`)).status)
      assert.deepEqual(statuses, [400, 400, 400, 400])
    })
    assert.equal(res.status, 429)
    assert.equal(JSON.parse(res.body.toString()).error.code, 'rate_limited')
    assert.ok(pairs(res).some(([n]) => n === 'retry-after'))
    assert.equal(await metricValue(srv, refusedSeries), refusedBefore + 1, 'counted once, as refused')
    assert.equal(await metricValue(srv, 'agentry_http_fast_answers_total'), fastBefore, 'not as answered ahead of the framework')
  })
})

describe(`GET /agents kept on PostgreSQL, shutdown starting during its check (${storeLeg()})`, () => {
  it('is answered 503 with Connection: close, as any request that meets the shutdown', { skip: onSqlite && 'SQLite: a kept list is sent at once, with no check to wait for' }, async () => {
    const srv = await startTestServer()
    let closed: Promise<void> | undefined
    try {
      assert.equal((await srv.call('POST', '/agents', { serviceUserId: 'list-at-shutdown', name: 'Late' })).status, 200)
      for (let i = 0; i < 3; i++) assert.equal((await get(`${srv.api}/agents`)).status, 200)
      const res = await withAgentsLocked(srv, async () => await get(`${srv.api}/agents`), async () => {
        closed = srv.close()
        // close() waits for the request in flight; the lock goes once shutdown has begun.
        await new Promise((resolve) => setTimeout(resolve, 50))
      })
      assert.equal(res.status, 503)
      assert.equal(JSON.parse(res.body.toString()).error.code, 'service_unavailable')
      assert.equal(res.headers.connection, 'close')
      assert.ok(pairs(res).some(([n]) => n === 'retry-after'))
    } finally {
      await (closed ?? srv.close())
    }
  })
})

describe('one keep-alive connection, several tokens', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer() })
  after(async () => { await srv.close() })

  it('judges every request by its own Authorization header', async () => {
    const other = await srv.services.tokens.create('other-widget')
    const reader = await srv.services.tokens.create('default', { scope: 'read' })
    const mine = await srv.call('POST', '/agents', { serviceUserId: 'conn-1', name: 'Mine' })
    const id = mine.body.data.id as string
    // One socket for every request below, so anything remembered per connection is put to the test.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
    const sockets = new Set<unknown>()
    const send = async (method: string, authorization: string | undefined, body?: string): Promise<number> => await new Promise((resolve, reject) => {
      const headers: Record<string, string> = authorization === undefined ? {} : { authorization }
      if (body !== undefined) headers['content-type'] = 'application/json'
      const req = http.request(`${srv.api}/agents/${id}`, { method, agent, headers }, (res) => {
        sockets.add(res.socket)
        res.resume()
        res.on('end', () => { resolve(res.statusCode ?? 0) })
      }).on('error', reject)
      req.end(body)
    })
    try {
      const rename = JSON.stringify({ name: 'Renamed' })
      assert.deepEqual([
        await send('GET', `Bearer ${TEST_TOKEN}`),
        await send('GET', `Bearer ${TEST_TOKEN}`),
        await send('GET', `Bearer ${other.token}`),
        await send('GET', 'Bearer not-a-token'),
        await send('GET', undefined),
        await send('GET', reader.token),
        await send('PUT', `Bearer ${reader.token}`, rename),
        await send('GET', `Bearer ${TEST_TOKEN}`),
        await send('PUT', `Bearer ${TEST_TOKEN}`, rename)
      ], [200, 200, 404, 401, 401, 200, 403, 200, 200])
      assert.equal(sockets.size, 1, 'all on one connection')
    } finally {
      agent.destroy()
    }
  })
})
