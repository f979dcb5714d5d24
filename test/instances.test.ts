import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import SQLite from 'better-sqlite3'
import { sql } from 'kysely'
import { rateWindowsFileOf } from '../src/db/rate-windows-sqlite.js'
import { hashToken } from '../src/tokens/service.js'
import { startFixtureServer, type FixtureServer } from './helpers/fixtures.js'
import { call, startTwoInstances, until, type Instances, type Reply, type ServeProcess } from './helpers/process.js'
import { metricValue, startTestServer, type TestServer } from './helpers/server.js'
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

  it('a change made through one instance shows in the other\'s next list, though it listed the same before (and kept it)', async () => {
    const created = await call(`${a.url}${AGENTS}`, { method: 'POST', headers: auth, body: JSON.stringify({ serviceUserId: 'shared-3', name: 'Listed before' }) })
    const id = (created.body as { data: { id: string } }).data.id
    const listedOn = async (p: ServeProcess, query: string): Promise<{ id: string, name: string } | undefined> => {
      const list = await call(`${p.url}${AGENTS}${query}`, { headers: auth })
      assert.equal(list.status, 200, list.text)
      return (list.body.data as Array<{ id: string, name: string }>).find((x) => x.id === id)
    }
    for (const query of ['', '?limit=50']) {
      // Three times: each instance keeps a list once it has read it (on PostgreSQL from its second).
      for (let i = 0; i < 3; i++) assert.equal((await listedOn(b, query))?.name, 'Listed before', query)
    }
    for (const name of ['Listed after 1', 'Listed after 2']) {
      assert.equal((await call(`${a.url}${AGENTS}/${id}`, { method: 'PUT', headers: auth, body: JSON.stringify({ name }) })).status, 200)
      for (const query of ['', '?limit=50']) assert.equal((await listedOn(b, query))?.name, name, query)
    }
    assert.equal((await call(`${a.url}${AGENTS}/${id}`, { method: 'DELETE', headers: { authorization: auth.authorization } })).status, 200)
    for (const query of ['', '?limit=50']) assert.equal(await listedOn(b, query), undefined, query)
    const hits = Number(/^agentry_list_cache_lookups_total\{result="hit"\} (\d+)$/m.exec((await call(`${b.url}/metrics`)).text)?.[1] ?? 0)
    assert.ok(hits >= 2, `lists were answered from memory on the instance that listed them (${hits} times)`)
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
  let instances: Instances

  before(async () => {
    instances = await startTwoInstances(TOKEN, { RATE_LIMIT_MAX: String(LIMIT), RATE_LIMIT_WINDOW_MS: '60000' })
  })

  after(async () => { await instances?.stop() })

  /** Waits until the instance has exchanged counts once more than `since`. */
  async function exchanged (p: ServeProcess, since: number): Promise<void> {
    await until('the instance to exchange its counts', async () => await exchanges(p.url, 'ok') > since ? true : undefined, 5_000)
  }

  const list = async (p: ServeProcess): Promise<Reply> => await call(`${p.url}${AGENTS}`, { headers: auth })
  const remaining = (r: Reply): number => Number(r.headers.get('ratelimit-remaining'))

  it('a token\'s limit holds across instances: what one admitted, the other counts', async () => {
    const { a, b } = instances
    for (let i = 1; i <= 30; i++) {
      const r = await list(a)
      assert.equal(r.status, 200)
      assert.equal(remaining(r), LIMIT - i)
    }
    const bBefore = await exchanges(b.url, 'ok')
    // b has not heard of a's requests before it exchanges its own counts.
    assert.equal(remaining(await list(b)), LIMIT - 1)
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
    const aBefore = await exchanges(a.url, 'ok')
    await list(a)
    await exchanged(a, aBefore)
    const refusedOnA = await list(a)
    assert.equal(refusedOnA.status, 429)
    assert.equal(remaining(refusedOnA), 0)
  })
})

/** How many exchanges of rate-limit counts the server at `url` has made, by result. */
async function exchanges (url: string, result: 'ok' | 'failed'): Promise<number> {
  return await metricValue({ url }, `agentry_rate_limit_exchanges_total{result="${result}"}`)
}

/**
 * The shared counts the server's instances add up, by key: PostgreSQL's table, or the SQLite
 * rate-limit file beside the database (read through a connection of its own).
 */
async function sharedCounts (srv: TestServer): Promise<Map<string, number>> {
  const target = srv.services.config.database
  if (target.kind === 'postgres') {
    const { rows } = await sql<{ key: string, count: number }>`select key, count from rate_limit_windows`.execute(srv.services.database.db)
    return new Map(rows.map((r) => [r.key, Number(r.count)]))
  }
  const file = new SQLite(rateWindowsFileOf(target.file), { readonly: true })
  try {
    const rows = file.prepare('select key, count from rate_limit_windows').all() as Array<{ key: string, count: number }>
    return new Map(rows.map((r) => [r.key, r.count]))
  } finally {
    file.close()
  }
}

/**
 * Makes the shared counts fail for real until the returned function is called: on PostgreSQL the
 * table is renamed away; on SQLite another connection holds the rate-limit file's write lock.
 */
async function breakSharedCounts (srv: TestServer): Promise<() => Promise<void>> {
  const target = srv.services.config.database
  const db = srv.services.database.db
  if (target.kind === 'postgres') {
    await sql`alter table rate_limit_windows rename to rate_limit_windows_away`.execute(db)
    return async () => { await sql`alter table rate_limit_windows_away rename to rate_limit_windows`.execute(db) }
  }
  const holder = new SQLite(rateWindowsFileOf(target.file))
  holder.exec('begin immediate')
  return async () => {
    holder.exec('commit')
    holder.close()
  }
}

describe(`rate-limit counts shared through the store (${storeLeg()})`, () => {
  let srv: TestServer

  before(async () => { srv = await startTestServer({ RATE_LIMIT_MAX: '100', RATE_LIMIT_WINDOW_MS: '60000' }) })
  after(async () => { await srv?.close() })

  const sharedCount = async (): Promise<number | undefined> => (await sharedCounts(srv)).get(hashToken(srv.token))

  it('while the store cannot take them, requests are still answered and counted here; then the counts are added up', async () => {
    assert.equal((await srv.call('GET', '/agents')).status, 200)
    await until('the first count to be shared', async () => await sharedCount() === 1 ? true : undefined, 5_000)

    const mend = await breakSharedCounts(srv)
    try {
      for (let i = 2; i <= 11; i++) {
        const r = await srv.call('GET', '/agents')
        assert.equal(r.status, 200)
        assert.equal(r.headers.get('ratelimit-remaining'), String(100 - i))
      }
      await until('an exchange to fail', async () => await exchanges(srv.url, 'failed') > 0 ? true : undefined, 5_000)
    } finally {
      await mend()
    }
    // Nothing counted meanwhile is lost: the next exchange sends it.
    await until('the counts to be added up', async () => await sharedCount() === 11 ? true : undefined, 10_000)
    const r = await srv.call('GET', '/agents')
    assert.equal(r.headers.get('ratelimit-remaining'), String(100 - 12))
  })

  it('made-up tokens are counted by the instance alone: they never reach the store', async () => {
    const made = 'made-up-token-0123456789'
    for (let i = 1; i <= 10; i++) {
      const r = await srv.call('GET', '/agents', undefined, { authorization: `Bearer ${made}` })
      assert.equal(r.status, 401)
      assert.equal(r.headers.get('ratelimit-remaining'), String(100 - i))
    }
    // The valid token's next request is sent with the next exchange; the made-up one is not.
    const before = await exchanges(srv.url, 'ok')
    await srv.call('GET', '/agents')
    await until('an exchange', async () => await exchanges(srv.url, 'ok') > before ? true : undefined, 5_000)
    assert.deepEqual([...(await sharedCounts(srv)).keys()], [hashToken(srv.token)])
  })
})

describe(`ended rate-limit windows are deleted (${storeLeg()})`, () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer({ RATE_LIMIT_MAX: '100', RATE_LIMIT_WINDOW_MS: '1000', MAINTENANCE_INTERVAL_MS: '100' }) })
  after(async () => { await srv?.close() })

  it('a window after the window ended (PostgreSQL: by the periodic upkeep; SQLite: by a later exchange)', async () => {
    const key = hashToken(srv.token)
    assert.equal((await srv.call('GET', '/agents')).status, 200)
    await until('the count to be shared', async () => (await sharedCounts(srv)).get(key) === 1 ? true : undefined, 5_000)
    // On SQLite the file is tidied when counts are added: another token's requests, from time to time.
    const other = await srv.services.tokens.create('rate-windows-other')
    await until('the ended window to be deleted', async () => {
      await srv.call('GET', '/agents', undefined, { authorization: `Bearer ${other.token}` })
      return (await sharedCounts(srv)).has(key) ? undefined : true
    }, 10_000, 250)
  })
})
