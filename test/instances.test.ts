import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { sql } from 'kysely'
import { hashToken } from '../src/tokens/service.js'
import { startFixtureServer, type FixtureServer } from './helpers/fixtures.js'
import { call, startTwoInstances, until, type Instances, type Reply, type ServeProcess } from './helpers/process.js'
import { startTestServer, type TestServer } from './helpers/server.js'
import { storeLeg } from './helpers/stores.js'

const TOKEN = 'instances-test-token-0123456789'
const AGENTS = '/api/external/v1/agents'
const auth = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }

describe(`two instances, one truth (${storeLeg()})`, () => {
  let fx: FixtureServer
  let instances: Instances
  let a: ServeProcess
  let b: ServeProcess

  before(async () => {
    fx = await startFixtureServer()
    instances = await startTwoInstances(TOKEN, { AVATAR_ALLOW_PRIVATE_NETWORKS: 'true' })
    ;({ a, b } = instances)
  })

  after(async () => {
    await instances?.stop()
    await fx?.close()
  })

  it('what is written through one instance is read through the other', async () => {
    const created = await call(`${a.url}${AGENTS}`, { method: 'POST', headers: auth, body: JSON.stringify({ serviceUserId: 'shared-1', name: 'Shared', avatar: `${fx.url}/photo.jpg` }) })
    assert.equal(created.status, 200, created.text)
    const agent = created.body.data
    assert.equal(agent.avatar.url.default, `http://cdn.example.test/static${agent.avatar.info.path}`)

    const read = await call(`${b.url}${AGENTS}/${agent.id}`, { headers: auth })
    assert.deepEqual(read.body, { status: 200, data: agent })

    // Either instance can serve the files the other stored.
    for (const variant of ['', '/120x120', '/520x400']) {
      const file = await fetch(`${b.url}/static${variant}${agent.avatar.info.path}`)
      assert.equal(file.status, 200, variant)
      assert.equal(file.headers.get('content-type'), 'image/jpeg')
      await file.arrayBuffer()
    }

    const updated = await call(`${b.url}${AGENTS}/${agent.id}`, { method: 'PUT', headers: auth, body: JSON.stringify({ status: 'online' }) })
    assert.equal(updated.status, 200)
    const list = await call(`${a.url}${AGENTS}`, { headers: auth })
    assert.equal(list.body.data.find((x: { id: string }) => x.id === agent.id)?.status, 'online')
  })

  it('a change made through one instance is what the other answers next, though it read the agent before', async () => {
    const created = await call(`${a.url}${AGENTS}`, { method: 'POST', headers: auth, body: JSON.stringify({ serviceUserId: 'shared-2', name: 'Before' }) })
    const id = (created.body as { data: { id: string } }).data.id
    for (let i = 0; i < 3; i++) assert.equal((await call(`${b.url}${AGENTS}/${id}`, { headers: auth })).status, 200)
    for (const name of ['After 1', 'After 2', 'After 3']) {
      const put = await call(`${a.url}${AGENTS}/${id}`, { method: 'PUT', headers: auth, body: JSON.stringify({ name }) })
      assert.equal(put.status, 200)
      const read = await call(`${b.url}${AGENTS}/${id}`, { headers: auth })
      assert.deepEqual(read.body, put.body)
      assert.equal(read.headers.get('etag'), put.headers.get('etag'))
    }
  })

  it('racing the same serviceUserId on both: exactly one wins, the other gets 409, nothing half-made', async () => {
    for (let round = 0; round < 10; round++) {
      const body = (name: string) => JSON.stringify({ serviceUserId: `race-${round}`, name })
      const results = await Promise.all([
        call(`${a.url}${AGENTS}`, { method: 'POST', headers: auth, body: body('via a') }),
        call(`${b.url}${AGENTS}`, { method: 'POST', headers: auth, body: body('via b') })
      ])
      assert.deepEqual(results.map((r) => r.status).sort(), [200, 409], `round ${round}: ${results.map((r) => r.text).join(' | ')}`)
      const loser = results.find((r) => r.status === 409)!
      assert.equal(loser.body.error.code, 'service_user_id_taken')
    }
    for (const instance of [a, b]) {
      const list = await call(`${instance.url}${AGENTS}`, { headers: auth })
      const racers = (list.body.data as Array<{ serviceUserId: string }>).filter((x) => x.serviceUserId.startsWith('race-'))
      assert.equal(racers.length, 10)
      assert.equal(new Set(racers.map((x) => x.serviceUserId)).size, 10)
    }
  })
})

describe(`rate limits across two instances (${storeLeg()})`, () => {
  const LIMIT = 40
  const onPostgres = storeLeg().startsWith('postgres')
  let instances: Instances

  before(async () => {
    instances = await startTwoInstances(TOKEN, { RATE_LIMIT_MAX: String(LIMIT), RATE_LIMIT_WINDOW_MS: '60000' })
  })

  after(async () => { await instances?.stop() })

  /** How many exchanges of counts with the other instances this one has made ("ok"). */
  async function exchanges (p: ServeProcess): Promise<number> {
    const text = await (await fetch(`${p.url}/metrics`)).text()
    return Number(/^agentry_rate_limit_exchanges_total\{result="ok"\} (\d+)$/m.exec(text)?.[1] ?? 0)
  }

  /** Waits until the instance has exchanged counts once more than `since`. */
  async function exchanged (p: ServeProcess, since: number): Promise<void> {
    await until('the instance to exchange its counts', async () => await exchanges(p) > since ? true : undefined, 5_000)
  }

  const list = async (p: ServeProcess): Promise<Reply> => await call(`${p.url}${AGENTS}`, { headers: auth })
  const remaining = (r: Reply): number => Number(r.headers.get('ratelimit-remaining'))

  it(onPostgres
    ? 'on PostgreSQL a token\'s limit holds across instances: what one admitted, the other counts'
    : 'on SQLite each process counts a token\'s requests alone', async () => {
    const { a, b } = instances
    for (let i = 1; i <= 30; i++) {
      const r = await list(a)
      assert.equal(r.status, 200)
      assert.equal(remaining(r), LIMIT - i)
    }
    const bBefore = await exchanges(b)
    // b has not heard of a's requests before it exchanges its own counts.
    assert.equal(remaining(await list(b)), LIMIT - 1)
    if (!onPostgres) {
      assert.equal(remaining(await list(b)), LIMIT - 2)
      assert.equal(await exchanges(b), 0)
      return
    }
    await exchanged(b, bBefore)
    // Now it has: 30 on a, 1 on b, and this one.
    const next = await list(b)
    assert.equal(next.status, 200)
    assert.equal(remaining(next), LIMIT - 32)
    for (let i = 33; i <= LIMIT; i++) assert.equal(remaining(await list(b)), LIMIT - i)
    const refused = await list(b)
    assert.equal(refused.status, 429)
    assert.equal(refused.body.error.code, 'rate_limited')
    assert.ok(Number(refused.headers.get('retry-after')) > 0)

    // a learns of b's requests with its next exchange, and refuses the token too.
    const aBefore = await exchanges(a)
    await list(a)
    await exchanged(a, aBefore)
    const refusedOnA = await list(a)
    assert.equal(refusedOnA.status, 429)
    assert.equal(remaining(refusedOnA), 0)
  })
})

describe(`rate-limit counts shared through the database (${storeLeg()})`, {
  skip: !storeLeg().startsWith('postgres') && 'SQLite: each process counts alone, in memory'
}, () => {
  let srv: TestServer

  before(async () => { srv = await startTestServer({ RATE_LIMIT_MAX: '100', RATE_LIMIT_WINDOW_MS: '60000' }) })
  after(async () => { await srv?.close() })

  async function exchanges (result: 'ok' | 'failed'): Promise<number> {
    const text = await (await fetch(`${srv.url}/metrics`)).text()
    return Number(new RegExp(`^agentry_rate_limit_exchanges_total\\{result="${result}"\\} (\\d+)$`, 'm').exec(text)?.[1] ?? 0)
  }

  async function sharedCount (): Promise<number | undefined> {
    const rows = await sql<{ count: number }>`select count from rate_limit_windows where key = ${hashToken(srv.token)}`.execute(srv.services.database.db)
    return rows.rows[0]?.count
  }

  it('requests are still answered, counted here; the counts are added up once the database takes them again', async () => {
    const db = srv.services.database.db
    assert.equal((await srv.call('GET', '/agents')).status, 200)
    await until('the first count to be shared', async () => await sharedCount() === 1 ? true : undefined, 5_000)

    // A real failure of the database: the table is not there.
    await sql`alter table rate_limit_windows rename to rate_limit_windows_away`.execute(db)
    try {
      for (let i = 2; i <= 11; i++) {
        const r = await srv.call('GET', '/agents')
        assert.equal(r.status, 200)
        assert.equal(r.headers.get('ratelimit-remaining'), String(100 - i))
      }
      await until('an exchange to fail', async () => await exchanges('failed') > 0 ? true : undefined, 5_000)
    } finally {
      await sql`alter table rate_limit_windows_away rename to rate_limit_windows`.execute(db)
    }
    // Nothing counted meanwhile is lost: the next exchange sends it.
    await until('the counts to be added up', async () => await sharedCount() === 11 ? true : undefined, 10_000)
    const r = await srv.call('GET', '/agents')
    assert.equal(r.headers.get('ratelimit-remaining'), String(100 - 12))
  })

  it('made-up tokens are counted by the instance alone: they never reach the database', async () => {
    const made = 'made-up-token-0123456789'
    for (let i = 1; i <= 10; i++) {
      const r = await srv.call('GET', '/agents', undefined, { authorization: `Bearer ${made}` })
      assert.equal(r.status, 401)
      assert.equal(r.headers.get('ratelimit-remaining'), String(100 - i))
    }
    // The valid token's next request is sent with the next exchange; the made-up one is not.
    const before = await exchanges('ok')
    await srv.call('GET', '/agents')
    await until('an exchange', async () => await exchanges('ok') > before ? true : undefined, 5_000)
    const rows = await sql<{ key: string }>`select key from rate_limit_windows`.execute(srv.services.database.db)
    assert.deepEqual(rows.rows.map((x) => x.key), [hashToken(srv.token)])
  })
})

describe(`ended rate-limit windows are deleted (${storeLeg()})`, {
  skip: !storeLeg().startsWith('postgres') && 'SQLite: each process counts alone, in memory'
}, () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer({ RATE_LIMIT_MAX: '100', RATE_LIMIT_WINDOW_MS: '1000', MAINTENANCE_INTERVAL_MS: '100' }) })
  after(async () => { await srv?.close() })

  it('by the periodic upkeep, a window after the window ended', async () => {
    const db = srv.services.database.db
    const windows = async (): Promise<number> => (await sql<{ n: number }>`select count(*)::int as n from rate_limit_windows`.execute(db)).rows[0]?.n ?? 0
    assert.equal((await srv.call('GET', '/agents')).status, 200)
    await until('the count to be shared', async () => await windows() === 1 ? true : undefined, 5_000)
    await until('the ended window to be deleted', async () => await windows() === 0 ? true : undefined, 10_000)
  })
})
