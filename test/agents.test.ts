import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { sql } from 'kysely'
import type { FixtureServer } from './helpers/fixtures.js'
import { changeAgentByHand, serversForSuite, startTestServer, type TestServer } from './helpers/server.js'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

describe('agents API (the seed\'s four endpoints)', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer() })
  after(async () => { await srv.close() })

  it('creates an agent with the seed\'s defaults and answers 200 in the envelope', async () => {
    const before = Math.floor(Date.now() / 1000)
    const res = await srv.call('POST', '/agents', { serviceUserId: '12345', name: 'Vadim Belorusov' })
    assert.equal(res.status, 200)
    assert.equal(res.body.status, 200)
    const a = res.body.data
    assert.match(a.id, UUID)
    assert.deepEqual(Object.keys(a).sort(), ['active', 'avatar', 'createdAt', 'id', 'name', 'serviceUserId', 'status', 'updatedAt'])
    assert.equal(a.serviceUserId, '12345')
    assert.equal(a.name, 'Vadim Belorusov')
    assert.equal(a.status, 'offline')
    assert.equal(a.active, true)
    assert.equal(a.avatar, null)
    assert.ok(Number.isInteger(a.createdAt) && a.createdAt >= before && a.createdAt <= before + 5)
    assert.equal(a.updatedAt, a.createdAt)
    assert.match(res.headers.get('content-type') ?? '', /^application\/json/)

    const got = await srv.call('GET', `/agents/${a.id}`)
    assert.equal(got.status, 200)
    assert.deepEqual(got.body, { status: 200, data: a })
  })

  it('takes every field on create', async () => {
    const res = await srv.call('POST', '/agents', { serviceUserId: 'all-fields', name: 'Ann', status: 'online', active: false, avatar: null })
    assert.equal(res.status, 200)
    assert.equal(res.body.data.status, 'online')
    assert.equal(res.body.data.active, false)
    assert.equal(res.body.data.avatar, null)
  })

  it('accepts application/x-www-form-urlencoded bodies with true|false|1|0 booleans', async () => {
    const form = (fields: string) => srv.call('POST', '/agents', fields, { 'content-type': 'application/x-www-form-urlencoded' })
    const a = await form('serviceUserId=form-1&name=Form%20Person&status=online&active=0')
    assert.equal(a.status, 200)
    assert.equal(a.body.data.name, 'Form Person')
    assert.equal(a.body.data.active, false)
    assert.equal(a.body.data.status, 'online')
    const b = await form('serviceUserId=form-2&name=B&active=true&avatar=')
    assert.equal(b.status, 200)
    assert.equal(b.body.data.active, true)
    assert.equal(b.body.data.avatar, null)
    const bad = await form('serviceUserId=form-3&name=C&active=yes')
    assert.equal(bad.status, 400)
    assert.equal(bad.body.error.code, 'validation_failed')
    assert.deepEqual(bad.body.error.details, [{ field: 'active', message: 'must be a boolean' }])

    const put = await srv.call('PUT', `/agents/${a.body.data.id}`, 'active=1&status=offline', { 'content-type': 'application/x-www-form-urlencoded' })
    assert.equal(put.status, 200)
    assert.equal(put.body.data.active, true)
    assert.equal(put.body.data.status, 'offline')
  })

  it('lists newest first, and agents created in the same second newest first too', async () => {
    const created: string[] = []
    for (let i = 0; i < 5; i++) {
      const res = await srv.call('POST', '/agents', { serviceUserId: `order-${i}`, name: `Order ${i}` })
      created.push(res.body.data.id)
    }
    const list = await srv.call('GET', '/agents')
    assert.equal(list.status, 200)
    assert.equal(list.body.status, 200)
    assert.ok(Array.isArray(list.body.data))
    const ids = (list.body.data as Array<{ id: string }>).map((a) => a.id)
    assert.deepEqual(ids.slice(0, 5), [...created].reverse())
    const times = (list.body.data as Array<{ createdAt: number }>).map((a) => a.createdAt)
    assert.deepEqual(times, [...times].sort((x, y) => y - x))
  })

  it('PUT changes only the fields given', async () => {
    const { body: { data: a } } = await srv.call('POST', '/agents', { serviceUserId: 'put-1', name: 'Before', status: 'online' })
    const res = await srv.call('PUT', `/agents/${a.id}`, { name: 'After' })
    assert.equal(res.status, 200)
    assert.equal(res.body.data.name, 'After')
    assert.equal(res.body.data.status, 'online')
    assert.equal(res.body.data.serviceUserId, 'put-1')
    assert.equal(res.body.data.active, true)
    assert.equal(res.body.data.createdAt, a.createdAt)

    const moved = await srv.call('PUT', `/agents/${a.id}`, { serviceUserId: 'put-1-renamed', active: false, status: 'offline' })
    assert.equal(moved.status, 200)
    assert.equal(moved.body.data.serviceUserId, 'put-1-renamed')
    assert.equal(moved.body.data.active, false)
    assert.equal(moved.body.data.status, 'offline')
    assert.equal(moved.body.data.name, 'After')
  })

  it('a PUT that changes nothing leaves updatedAt as it was; a change moves it', async () => {
    const { body: { data: a } } = await srv.call('POST', '/agents', { serviceUserId: 'idem-1', name: 'Same', status: 'online' })
    await new Promise((resolve) => setTimeout(resolve, 1100))
    const same = await srv.call('PUT', `/agents/${a.id}`, { name: 'Same', status: 'online', serviceUserId: 'idem-1', active: true, avatar: null })
    assert.equal(same.status, 200)
    assert.deepEqual(same.body.data, a)
    const empty = await srv.call('PUT', `/agents/${a.id}`, {})
    assert.deepEqual(empty.body.data, a)
    const changed = await srv.call('PUT', `/agents/${a.id}`, { status: 'offline' })
    assert.ok(changed.body.data.updatedAt > a.updatedAt)
    assert.equal(changed.body.data.createdAt, a.createdAt)
  })

  it('serviceUserId is unique within a widget: 409 on create and on update', async () => {
    const first = await srv.call('POST', '/agents', { serviceUserId: 'dup', name: 'One' })
    assert.equal(first.status, 200)
    const second = await srv.call('POST', '/agents', { serviceUserId: 'dup', name: 'Two' })
    assert.equal(second.status, 409)
    assert.equal(second.body.status, 409)
    assert.equal(second.body.error.code, 'service_user_id_taken')
    assert.match(second.body.error.message, /dup/)
    const other = await srv.call('POST', '/agents', { serviceUserId: 'dup-other', name: 'Three' })
    const clash = await srv.call('PUT', `/agents/${other.body.data.id}`, { serviceUserId: 'dup' })
    assert.equal(clash.status, 409)
    assert.equal(clash.body.error.code, 'service_user_id_taken')
    const list = await srv.call('GET', '/agents')
    assert.equal((list.body.data as Array<{ serviceUserId: string }>).filter((a) => a.serviceUserId === 'dup').length, 1)
  })

  it('concurrent creates of one serviceUserId: exactly one wins', async () => {
    const results = await Promise.all(Array.from({ length: 8 }, (_, i) => srv.call('POST', '/agents', { serviceUserId: 'race', name: `Racer ${i}` })))
    assert.deepEqual(results.map((r) => r.status).sort(), [200, 409, 409, 409, 409, 409, 409, 409])
  })

  it('unknown ids are 404 in the envelope, whatever their shape', async () => {
    for (const id of ['00000000-0000-4000-8000-000000000000', 'not-a-uuid', '1']) {
      const got = await srv.call('GET', `/agents/${id}`)
      assert.equal(got.status, 404)
      assert.equal(got.body.status, 404)
      assert.equal(got.body.error.code, 'not_found')
      const put = await srv.call('PUT', `/agents/${id}`, { name: 'x' })
      assert.equal(put.status, 404)
      assert.equal(put.body.error.code, 'not_found')
    }
  })
})

describe('tokens and tenancy', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer() })
  after(async () => { await srv.close() })

  it('accepts the bare token and Bearer <token>; refuses missing and unknown tokens with 401', async () => {
    const bare = await srv.call('GET', '/agents', undefined, { authorization: srv.token })
    assert.equal(bare.status, 200)
    const bearer = await srv.call('GET', '/agents', undefined, { authorization: `bearer ${srv.token}` })
    assert.equal(bearer.status, 200)

    const missing = await fetch(`${srv.api}/agents`)
    assert.equal(missing.status, 401)
    const body = await missing.json() as { status: number, error: { code: string, message: string } }
    assert.equal(body.status, 401)
    assert.equal(body.error.code, 'unauthorized')
    assert.equal(missing.headers.get('www-authenticate'), 'Bearer')

    for (const auth of ['Bearer nope', 'nope', 'Bearer ', `Basic ${srv.token}x`]) {
      const res = await srv.call('POST', '/agents', { serviceUserId: 'x', name: 'x' }, { authorization: auth })
      assert.equal(res.status, 401, auth)
      assert.equal(res.body.error.code, 'unauthorized')
    }
    const list = await srv.call('GET', '/agents')
    assert.deepEqual(list.body.data, [])
  })

  it('a widget sees only its own agents; another widget\'s agent is a 404', async () => {
    const other = await srv.services.tokens.create('acme')
    const mine = await srv.call('POST', '/agents', { serviceUserId: 'shared-id', name: 'Mine' })
    const theirs = await srv.call('POST', '/agents', { serviceUserId: 'shared-id', name: 'Theirs' }, { authorization: other.token })
    assert.equal(theirs.status, 200, 'serviceUserId is unique per widget, not globally')

    const seen = await srv.call('GET', `/agents/${theirs.body.data.id}`)
    assert.equal(seen.status, 404)
    assert.equal(seen.body.error.code, 'not_found')
    const missing = await srv.call('GET', '/agents/00000000-0000-4000-8000-000000000000')
    assert.deepEqual(Object.keys(seen.body.error), Object.keys(missing.body.error))
    const put = await srv.call('PUT', `/agents/${theirs.body.data.id}`, { name: 'Hijacked' })
    assert.equal(put.status, 404)

    const myList = await srv.call('GET', '/agents')
    assert.deepEqual((myList.body.data as Array<{ id: string }>).map((a) => a.id), [mine.body.data.id])
    const theirList = await srv.call('GET', '/agents', undefined, { authorization: other.token })
    assert.deepEqual((theirList.body.data as Array<{ id: string, name: string }>).map((a) => a.name), ['Theirs'])
  })

  it('a revoked token is refused at once', async () => {
    const t = await srv.services.tokens.create('revokable')
    assert.equal((await srv.call('GET', '/agents', undefined, { authorization: t.token })).status, 200)
    assert.equal(await srv.services.tokens.revoke(t.id), 1)
    assert.equal((await srv.call('GET', '/agents', undefined, { authorization: t.token })).status, 401)
  })

  it('stores tokens only as hashes', async () => {
    const t = await srv.services.tokens.create('hashed')
    const rows = await srv.services.database.db.selectFrom('tokens').selectAll().execute()
    assert.ok(rows.length >= 2)
    for (const row of rows) {
      assert.match(row.token_hash, /^[0-9a-f]{64}$/)
      assert.ok(!JSON.stringify(row).includes(t.token))
      assert.ok(!JSON.stringify(row).includes(srv.token))
    }
  })
})

describe('updatedAt never goes backwards', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer() })
  after(async () => { await srv.close() })

  /**
   * An agent as an instance whose clock runs an hour ahead of this one's left it (several instances
   * share a PostgreSQL database, and their clocks need not agree): its updatedAt is set in the
   * database by hand, as that instance's write would have set it.
   */
  async function writtenAhead (serviceUserId: string): Promise<{ id: string, ahead: number }> {
    const { body: { data: a } } = await srv.call('POST', '/agents', { serviceUserId, name: 'Ahead' })
    const ahead = a.updatedAt + 3600
    await changeAgentByHand(srv, a.id, { name: 'Ahead, renamed', updated_at: ahead })
    const got = await srv.call('GET', `/agents/${a.id}`)
    assert.equal(got.body.data.updatedAt, ahead)
    return { id: a.id, ahead }
  }

  it('a change to an agent last written by a clock ahead of this one keeps its updatedAt, so an updatedSince sync from it sees the change', async () => {
    const { id, ahead } = await writtenAhead('ahead-put')
    const put = await srv.call('PUT', `/agents/${id}`, { name: 'Changed here', status: 'online' })
    assert.equal(put.status, 200, JSON.stringify(put.body))
    assert.equal(put.body.data.name, 'Changed here')
    assert.equal(put.body.data.updatedAt, ahead, 'the later change is not stamped earlier than the one before it')
    assert.deepEqual((await srv.call('GET', `/agents/${id}`)).body.data, put.body.data)
    // A client that synced up to `ahead` asks for what changed at or after it.
    const since = await srv.call('GET', `/agents?updatedSince=${ahead}`)
    assert.deepEqual(since.body.data.map((a: { id: string }) => a.id), [id])
    assert.equal(since.body.data[0].name, 'Changed here')
  })

  it('a heartbeat that brings such an agent online does not stamp it earlier either', async () => {
    const { id, ahead } = await writtenAhead('ahead-beat')
    const beat = await srv.call('POST', `/agents/${id}/heartbeat`)
    assert.equal(beat.status, 200, JSON.stringify(beat.body))
    assert.equal(beat.body.data.status, 'online')
    assert.equal(beat.body.data.updatedAt, ahead)
    assert.equal((await srv.call('GET', `/agents/${id}`)).body.data.updatedAt, ahead)
  })
})

describe('reads of one agent while a newer version migrates the schema', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer({ AGENT_CACHE_ENTRIES: '0' }) })
  after(async () => { await srv.close() })

  // On PostgreSQL GET /agents/:id runs as a prepared statement; one prepared as `select *` would fail
  // with "cached plan must not change result type" once a column is added, as a newer instance's
  // migration might do while this one still runs.
  it('keeps answering when a column is added to the agents table', async () => {
    const { body: { data: a } } = await srv.call('POST', '/agents', { serviceUserId: 'schema-1', name: 'Steady' })
    for (let i = 0; i < 10; i++) assert.equal((await srv.call('GET', `/agents/${a.id}`)).status, 200)
    await sql`alter table agents add column added_by_a_newer_version text`.execute(srv.services.database.db)
    try {
      for (let i = 0; i < 10; i++) {
        const res = await srv.call('GET', `/agents/${a.id}`)
        assert.equal(res.status, 200, JSON.stringify(res.body))
        assert.deepEqual(res.body.data, a)
      }
    } finally {
      await sql`alter table agents drop column added_by_a_newer_version`.execute(srv.services.database.db)
    }
  })
})

describe('a list with more avatars than are kept in memory', () => {
  let srv: TestServer
  let fx: FixtureServer
  // Avatar records are kept in memory up to a bound (10,000); two here, so three overflow it.
  serversForSuite((s, f) => { srv = s; fx = f }, {}, { avatarRowsKept: 2 })

  it('shows every agent with its avatar, in the list and read one by one', async () => {
    const created = []
    for (const [i, image] of ['photo.png', 'photo.webp', 'rotated.jpg'].entries()) {
      const res = await srv.call('POST', '/agents', { serviceUserId: `kept-${i}`, name: `Kept ${i}`, avatar: `${fx.url}/${image}` })
      assert.equal(res.status, 200)
      created.push(res.body.data)
    }
    for (let round = 0; round < 2; round++) {
      const list = await srv.call('GET', '/agents')
      const byId = new Map((list.body.data as Array<{ id: string, avatar: unknown }>).map((a) => [a.id, a.avatar]))
      for (const a of created) assert.deepEqual(byId.get(a.id), a.avatar, `round ${round}: ${a.serviceUserId as string}`)
      for (const a of created) assert.deepEqual((await srv.call('GET', `/agents/${a.id as string}`)).body.data.avatar, a.avatar)
    }
  })
})
