import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { after, before, describe, it } from 'node:test'
import { startTestServer, type ApiResponse, type TestServer } from './helpers/server.js'

/**
 * Heartbeat presence and availability, with a 2-second presence TTL and upkeep every 200 ms.
 * Times are unix seconds, so a heartbeat at second s is good until s + 2: it lapses between one
 * and two real seconds later. Waits are bounded and polled.
 */

const TTL = 2
const LAPSE_WAIT_MS = 4500

type Call = (method: string, path: string, body?: unknown) => Promise<ApiResponse>

const sleep = async (ms: number) => { await new Promise((resolve) => setTimeout(resolve, ms)) }
const nowSeconds = () => Math.floor(Date.now() / 1000)

/** Waits (at most a second) until the wall clock is past `second`, so later writes get a later timestamp. */
async function pastSecond (second: number): Promise<void> {
  while (nowSeconds() <= second) await sleep(20)
}

/** Polls until done() holds, for at most timeoutMs; returns the last value (the caller asserts on it). */
async function pollUntil<T> (read: () => Promise<T>, done: (value: T) => boolean, timeoutMs = LAPSE_WAIT_MS): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let value = await read()
  while (!done(value) && Date.now() < deadline) {
    await sleep(100)
    value = await read()
  }
  return value
}

function assertAbout (actual: number, expected: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= 1, `${what}: ${actual} should be within 1 s of ${expected}`)
}

function asToken (srv: TestServer, token: string): Call {
  return async (method, path, body) => await srv.call(method, path, body, { authorization: `Bearer ${token}` })
}

async function createAgent (call: Call, serviceUserId: string, extra: Record<string, unknown> = {}): Promise<{ id: string, createdAt: number, updatedAt: number }> {
  const res = await call('POST', '/agents', { serviceUserId, name: `Agent ${serviceUserId}`, ...extra })
  assert.equal(res.status, 200, JSON.stringify(res.body))
  return res.body.data
}

// The tests here wait on the clock and each uses agents of its own, so they run side by side.
describe('heartbeat presence (PRESENCE_TTL_SECONDS=2)', { concurrency: true }, () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer({ PRESENCE_TTL_SECONDS: String(TTL), MAINTENANCE_INTERVAL_MS: '200' }) })
  after(async () => { await srv.close() })

  it('a heartbeat on an offline agent: 200, online until now + TTL, updatedAt moved to now; GET shows it online', async () => {
    const agent = await createAgent(srv.call, 'beat-1')
    assert.equal((await srv.call('GET', `/agents/${agent.id}`)).body.data.status, 'offline')
    await pastSecond(agent.updatedAt)

    const before = nowSeconds()
    const res = await srv.call('POST', `/agents/${agent.id}/heartbeat`)
    assert.equal(res.status, 200, JSON.stringify(res.body))
    assert.deepEqual(Object.keys(res.body).sort(), ['data', 'meta', 'status'])
    assert.equal(res.body.status, 200)
    assert.equal(res.body.data.id, agent.id)
    assert.equal(res.body.data.status, 'online')
    assert.equal(res.body.data.createdAt, agent.createdAt)
    assert.ok(Number.isInteger(res.body.meta.onlineUntil))
    assertAbout(res.body.meta.onlineUntil, before + TTL, 'onlineUntil')
    assertAbout(res.body.data.updatedAt, before, 'updatedAt')
    assert.ok(res.body.data.updatedAt > agent.updatedAt, 'going online is a change')
    assert.equal(res.body.meta.onlineUntil, res.body.data.updatedAt + TTL)

    const got = await srv.call('GET', `/agents/${agent.id}`)
    assert.equal(got.status, 200)
    assert.deepEqual(got.body, { status: 200, data: res.body.data })
    const online = await srv.call('GET', '/agents?status=online')
    assert.ok((online.body.data as Array<{ id: string }>).some((a) => a.id === agent.id))
  })

  it('heartbeats while online keep it online past the TTL and do not move updatedAt', async () => {
    const agent = await createAgent(srv.call, 'beat-2')
    await pastSecond(agent.updatedAt)
    const first = await srv.call('POST', `/agents/${agent.id}/heartbeat`)
    assert.equal(first.status, 200)
    const wentOnline = first.body.data.updatedAt as number
    let lastUntil = first.body.meta.onlineUntil as number

    // Beat every 600 ms for well over the TTL; between beats it must read as online throughout.
    const end = Date.now() + (TTL + 1.5) * 1000
    while (Date.now() < end) {
      await sleep(600)
      const got = await srv.call('GET', `/agents/${agent.id}`)
      assert.equal(got.body.data.status, 'online')
      assert.equal(got.body.data.updatedAt, wentOnline)
      const beat = await srv.call('POST', `/agents/${agent.id}/heartbeat`)
      assert.equal(beat.status, 200)
      assert.equal(beat.body.data.status, 'online')
      assert.equal(beat.body.data.updatedAt, wentOnline, 'a beat that keeps it online is not a change')
      assert.ok(beat.body.meta.onlineUntil >= lastUntil, 'the expiry only moves forward')
      assertAbout(beat.body.meta.onlineUntil, nowSeconds() + TTL, 'onlineUntil')
      lastUntil = beat.body.meta.onlineUntil
    }
    assert.ok(lastUntil > first.body.meta.onlineUntil, 'later beats extended the expiry')
    assert.ok(nowSeconds() >= first.body.meta.onlineUntil, 'the first expiry has passed, and it is still online')
    assert.equal((await srv.call('GET', `/agents/${agent.id}`)).body.data.status, 'online')
  })

  it('when heartbeats stop it goes offline by itself, stamped with the moment it lapsed, and incremental sync sees it', async () => {
    const agent = await createAgent(srv.call, 'beat-3')
    const beat = await srv.call('POST', `/agents/${agent.id}/heartbeat`)
    assert.equal(beat.status, 200)
    const lapsed = beat.body.meta.onlineUntil as number

    const got = await pollUntil(() => srv.call('GET', `/agents/${agent.id}`), (r) => r.body.data.status === 'offline')
    assert.equal(got.body.data.status, 'offline', `offline within ${LAPSE_WAIT_MS} ms`)
    assert.ok(Date.now() / 1000 >= lapsed - 1, 'not before its time')
    assert.equal(got.body.data.updatedAt, lapsed, 'updatedAt is the old onlineUntil')

    const online = await srv.call('GET', '/agents?status=online')
    assert.ok(!(online.body.data as Array<{ id: string }>).some((a) => a.id === agent.id))
    const offline = await srv.call('GET', '/agents?status=offline')
    assert.ok((offline.body.data as Array<{ id: string }>).some((a) => a.id === agent.id))

    const sync = await srv.call('GET', `/agents?updatedSince=${lapsed}`)
    const listed = (sync.body.data as Array<{ id: string }>).find((a) => a.id === agent.id)
    assert.deepEqual(listed, got.body.data, 'the list says what GET says')
    const paged = await srv.call('GET', `/agents?updatedSince=${lapsed}&status=offline&limit=50`)
    assert.ok((paged.body.data as Array<{ id: string }>).some((a) => a.id === agent.id))
    const later = await srv.call('GET', `/agents?updatedSince=${lapsed + 1}`)
    assert.ok(!(later.body.data as Array<{ id: string }>).some((a) => a.id === agent.id))
  })

  it('the periodic upkeep writes the lapse down without anyone reading; a later heartbeat is a change again', async () => {
    const agent = await createAgent(srv.call, 'beat-4')
    const beat = await srv.call('POST', `/agents/${agent.id}/heartbeat`)
    const lapsed = beat.body.meta.onlineUntil as number
    // No API reads until well after the lapse: only the upkeep (every 200 ms) can have acted.
    // This one look at the stored row is the only way to tell it from the API's on-read view.
    await pastSecond(lapsed)
    const row = await pollUntil(
      () => srv.services.database.db.selectFrom('agents').select(['status', 'updated_at', 'presence_expires_at']).where('id', '=', agent.id).executeTakeFirstOrThrow(),
      (r) => r.status === 'offline', 1500)
    assert.deepEqual(row, { status: 'offline', updated_at: lapsed, presence_expires_at: null })
    const got = await srv.call('GET', `/agents/${agent.id}`)
    assert.equal(got.body.data.status, 'offline')
    assert.equal(got.body.data.updatedAt, lapsed)

    const again = await srv.call('POST', `/agents/${agent.id}/heartbeat`)
    assert.equal(again.body.data.status, 'online')
    assert.ok(again.body.data.updatedAt > lapsed)
    assert.equal(again.body.meta.onlineUntil, again.body.data.updatedAt + TTL)
  })

  it('PUT {status:"online"} on a heartbeat agent: online with no expiry, still online after the TTL', async () => {
    const agent = await createAgent(srv.call, 'put-online')
    const beat = await srv.call('POST', `/agents/${agent.id}/heartbeat`)
    const until = beat.body.meta.onlineUntil as number
    const put = await srv.call('PUT', `/agents/${agent.id}`, { status: 'online' })
    assert.equal(put.status, 200)
    assert.equal(put.body.data.status, 'online')
    assert.equal(put.body.data.updatedAt, beat.body.data.updatedAt, 'already online: the representation did not change')

    await pastSecond(until)
    await sleep(500) // a few upkeep rounds past the old expiry
    const got = await srv.call('GET', `/agents/${agent.id}`)
    assert.equal(got.body.data.status, 'online')
    assert.equal(got.body.data.updatedAt, put.body.data.updatedAt)
    const online = await srv.call('GET', '/agents?status=online')
    assert.ok((online.body.data as Array<{ id: string }>).some((a) => a.id === agent.id))
  })

  it('PUT {status:"offline"} on a heartbeat agent: offline at once, and the old expiry does not touch it later', async () => {
    const agent = await createAgent(srv.call, 'put-offline')
    await pastSecond(agent.updatedAt)
    const beat = await srv.call('POST', `/agents/${agent.id}/heartbeat`)
    assert.equal(beat.body.data.status, 'online')
    const until = beat.body.meta.onlineUntil as number
    await pastSecond(beat.body.data.updatedAt)
    const put = await srv.call('PUT', `/agents/${agent.id}`, { status: 'offline' })
    assert.equal(put.status, 200)
    assert.equal(put.body.data.status, 'offline')
    assert.ok(put.body.data.updatedAt > beat.body.data.updatedAt)
    assert.ok(put.body.data.updatedAt < until, 'before the heartbeat would have lapsed')
    assert.deepEqual((await srv.call('GET', `/agents/${agent.id}`)).body.data, put.body.data)

    await pastSecond(until)
    await sleep(500)
    assert.deepEqual((await srv.call('GET', `/agents/${agent.id}`)).body.data, put.body.data, 'updatedAt stays the moment of the PUT')
  })

  it('heartbeat on an unknown id, or on another widget\'s agent: 404', async () => {
    for (const id of [randomUUID(), 'not-a-uuid']) {
      const res = await srv.call('POST', `/agents/${id}/heartbeat`)
      assert.equal(res.status, 404)
      assert.equal(res.body.status, 404)
      assert.equal(res.body.error.code, 'not_found')
    }

    const other = asToken(srv, (await srv.services.tokens.create('other')).token)
    const theirs = await createAgent(other, 'theirs')
    const res = await srv.call('POST', `/agents/${theirs.id}/heartbeat`)
    assert.equal(res.status, 404)
    assert.equal(res.body.error.code, 'not_found')
    const still = await other('GET', `/agents/${theirs.id}`)
    assert.equal(still.body.data.status, 'offline', 'untouched')
    assert.equal(still.body.data.updatedAt, theirs.updatedAt)
    assert.equal((await other('POST', `/agents/${theirs.id}/heartbeat`)).status, 200, 'its own widget may beat it')
  })

  it('a read-only token of the same widget: 403 forbidden on heartbeat, 200 on availability', async () => {
    const agent = await createAgent(srv.call, 'read-only-target')
    const reader = asToken(srv, (await srv.services.tokens.create('default', { scope: 'read' })).token)
    assert.equal((await reader('GET', `/agents/${agent.id}`)).status, 200, 'same widget: it sees the agent')

    const beat = await reader('POST', `/agents/${agent.id}/heartbeat`)
    assert.equal(beat.status, 403)
    assert.equal(beat.body.status, 403)
    assert.equal(beat.body.error.code, 'forbidden')
    assert.equal((await srv.call('GET', `/agents/${agent.id}`)).body.data.status, 'offline', 'no beat happened')

    const availability = await reader('GET', '/agents/availability')
    assert.equal(availability.status, 200)
    assert.deepEqual(Object.keys(availability.body.data).sort(), ['available', 'online'])
    assert.ok(Number.isInteger(availability.body.data.online))
    assert.equal(availability.body.data.available, availability.body.data.online > 0)
    // Other tests beat agents of this widget meanwhile, so the exact count is the availability suite's job.
    assert.equal((await reader('GET', '/agents?status=online')).status, 200)
  })
})

describe('more heartbeats lapse together than one batch of the upkeep (500)', () => {
  let srv: TestServer
  let call: Call
  before(async () => {
    // No upkeep during the test: the lists must write the lapses down themselves, all of them.
    srv = await startTestServer({ PRESENCE_TTL_SECONDS: '1', MAINTENANCE_INTERVAL_MS: '3600000', RATE_LIMIT_MAX: '100000' })
    call = asToken(srv, (await srv.services.tokens.create('many-lapses')).token)
  })
  after(async () => { await srv.close() })

  it('the status filters agree with the statuses shown: every lapsed agent is offline, whatever the page', async () => {
    const count = 600
    let lastUntil = 0
    for (let i = 0; i < count; i += 25) {
      await Promise.all(Array.from({ length: Math.min(25, count - i) }, async (_, j) => {
        const agent = await createAgent(call, `lapse-${i + j}`)
        const beat = await call('POST', `/agents/${agent.id}/heartbeat`)
        assert.equal(beat.status, 200)
        lastUntil = Math.max(lastUntil, beat.body.meta.onlineUntil as number)
      }))
    }
    await pastSecond(lastUntil)
    const online = await call('GET', '/agents?status=online&limit=100')
    assert.deepEqual(online.body.data.map((a: { status: string }) => a.status), [])
    const offline = await call('GET', '/agents?status=offline')
    assert.equal(offline.body.data.length, count)
    assert.ok(offline.body.data.every((a: { status: string }) => a.status === 'offline'))
    assert.deepEqual(await call('GET', '/agents/availability').then((r) => r.body.data), { online: 0, available: false })
  })
})

describe('GET /agents/availability', () => {
  let srv: TestServer
  let call: Call
  before(async () => {
    srv = await startTestServer({ PRESENCE_TTL_SECONDS: String(TTL), MAINTENANCE_INTERVAL_MS: '200' })
    // A widget of its own, so its counts are exact.
    call = asToken(srv, (await srv.services.tokens.create('availability')).token)
  })
  after(async () => { await srv.close() })

  const availability = async () => {
    const res = await call('GET', '/agents/availability')
    assert.equal(res.status, 200)
    return res.body
  }

  it('counts agents that are online and active; an online but inactive agent, or a lapsed heartbeat, does not count', async () => {
    assert.deepEqual(await availability(), { status: 200, data: { online: 0, available: false } })

    const onlineActive = await createAgent(call, 'a-online', { status: 'online' })
    await createAgent(call, 'a-online-inactive', { status: 'online', active: false })
    const offlineActive = await createAgent(call, 'a-offline')
    assert.deepEqual(await availability(), { status: 200, data: { online: 1, available: true } })

    const beat = await call('POST', `/agents/${offlineActive.id}/heartbeat`)
    assert.equal(beat.status, 200)
    assert.deepEqual(await availability(), { status: 200, data: { online: 2, available: true } })

    const lapsed = await pollUntil(availability, (b) => b.data.online === 1)
    assert.deepEqual(lapsed, { status: 200, data: { online: 1, available: true } }, `the heartbeat lapsed within ${LAPSE_WAIT_MS} ms`)
    assert.ok(Date.now() / 1000 >= beat.body.meta.onlineUntil - 1, 'not before its time')

    const inactive = await call('PUT', `/agents/${onlineActive.id}`, { active: false })
    assert.equal(inactive.body.data.status, 'online')
    assert.deepEqual(await availability(), { status: 200, data: { online: 0, available: false } })
    await call('PUT', `/agents/${onlineActive.id}`, { active: true })
    assert.deepEqual(await availability(), { status: 200, data: { online: 1, available: true } })
    await call('PUT', `/agents/${onlineActive.id}`, { status: 'offline' })
    assert.deepEqual(await availability(), { status: 200, data: { online: 0, available: false } })
  })

  it('with nobody online (everyone offline or lapsed): {online: 0, available: false}', async () => {
    const agent = await createAgent(call, 'a-briefly')
    await call('POST', `/agents/${agent.id}/heartbeat`)
    assert.deepEqual(await availability(), { status: 200, data: { online: 1, available: true } })
    const after = await pollUntil(availability, (b) => b.data.online === 0)
    assert.deepEqual(after, { status: 200, data: { online: 0, available: false } })
  })

  it('counts only its own widget', async () => {
    await srv.call('POST', '/agents', { serviceUserId: 'elsewhere', name: 'Elsewhere', status: 'online' })
    assert.deepEqual((await srv.call('GET', '/agents/availability')).body, { status: 200, data: { online: 1, available: true } })
    assert.deepEqual(await availability(), { status: 200, data: { online: 0, available: false } })
  })
})
