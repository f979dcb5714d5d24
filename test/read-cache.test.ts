import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import SQLite from 'better-sqlite3'
import { metricSeries, metricValue, renameAgentByHand, startTestServer, type ApiResponse, type TestServer } from './helpers/server.js'
import { storeLeg } from './helpers/stores.js'

/**
 * GET /agents/:id is answered from a per-instance read cache on SQLite (AGENT_CACHE_ENTRIES). What a
 * client sees must not change: every write shows at once, a lapsed heartbeat reads as offline when it
 * lapses, and a write by another process to the same file shows too. On PostgreSQL the cache is off
 * (other instances write), which the metrics say. Lists (GET /agents) are kept whole on SQLite the
 * same way, and on PostgreSQL too, each sent again only after a check that its rows are unchanged
 * (CheckedLists): either way they must show every write just as well.
 */

const onSqlite = storeLeg().startsWith('sqlite')
const sleep = async (ms: number) => { await new Promise((resolve) => setTimeout(resolve, ms)) }

describe('GET /agents/:id with the read cache', () => {
  let srv: TestServer
  // The upkeep never runs during these tests: a lapse must show on read, from the cache too.
  before(async () => { srv = await startTestServer({ PRESENCE_TTL_SECONDS: '1', MAINTENANCE_INTERVAL_MS: '3600000', AGENT_CACHE_ENTRIES: '3' }) })
  after(async () => { await srv.close() })

  async function create (serviceUserId: string): Promise<string> {
    const res = await srv.call('POST', '/agents', { serviceUserId, name: `Agent ${serviceUserId}` })
    assert.equal(res.status, 200)
    return res.body.data.id as string
  }

  async function getTwice (id: string): Promise<ApiResponse> {
    const first = await srv.call('GET', `/agents/${id}`)
    const second = await srv.call('GET', `/agents/${id}`)
    assert.deepEqual(second.body, first.body)
    assert.equal(second.headers.get('etag'), first.headers.get('etag'))
    return second
  }

  it('every write shows on the next read, with a new ETag; a deleted agent is 404', async () => {
    const id = await create('cache-1')
    const before = await getTwice(id)
    assert.equal(before.headers.get('content-type'), 'application/json; charset=utf-8')

    const put = await srv.call('PUT', `/agents/${id}`, { name: 'Renamed' })
    assert.equal(put.status, 200)
    // The next write starts from the row the last one wrote (kept in the cache): both changes stay.
    const second = await srv.call('PUT', `/agents/${id}`, { status: 'online' })
    assert.equal(second.body.data.name, 'Renamed')
    assert.equal(second.body.data.status, 'online')
    const back = await srv.call('PUT', `/agents/${id}`, { status: 'offline' })
    assert.equal(back.body.data.status, 'offline')
    assert.deepEqual(back.body.data, { ...put.body.data, updatedAt: back.body.data.updatedAt })
    const renamed = await srv.call('GET', `/agents/${id}`)
    assert.equal(renamed.body.data.name, 'Renamed')
    assert.deepEqual(renamed.body, back.body)
    assert.notEqual(renamed.headers.get('etag'), before.headers.get('etag'))
    assert.equal(renamed.headers.get('etag'), back.headers.get('etag'))

    const upper = await srv.call('GET', `/agents/${id.toUpperCase()}`)
    assert.equal(upper.body.data.name, 'Renamed', 'the id is case-insensitive, from the cache too')

    assert.equal((await srv.call('DELETE', `/agents/${id}`)).status, 200)
    const gone = await srv.call('GET', `/agents/${id}`)
    assert.equal(gone.status, 404)
    assert.equal(gone.body.error.code, 'not_found')
  })

  it('If-None-Match with the cached ETag answers 304', async () => {
    const id = await create('cache-2')
    const { headers } = await getTwice(id)
    const etag = headers.get('etag') ?? ''
    const res = await fetch(`${srv.api}/agents/${id}`, { headers: { authorization: `Bearer ${srv.token}`, 'if-none-match': etag } })
    assert.equal(res.status, 304)
    assert.equal(res.headers.get('etag'), etag)
  })

  it('an agent online by heartbeat reads as offline once the heartbeat lapses, though nothing wrote since', async () => {
    const id = await create('cache-3')
    // Presence is kept in whole seconds: a heartbeat late in a second would lapse at the next one,
    // within milliseconds at a 1 s TTL. Beat early in a second, so it is online for most of one.
    while (Date.now() % 1000 > 200) await sleep(20)
    assert.equal((await srv.call('POST', `/agents/${id}/heartbeat`)).status, 200)
    const online = await getTwice(id)
    assert.equal(online.body.data.status, 'online')
    const deadline = Date.now() + 4000
    let res = online
    while (res.body.data.status === 'online' && Date.now() < deadline) {
      await sleep(100)
      res = await srv.call('GET', `/agents/${id}`)
    }
    assert.equal(res.body.data.status, 'offline', 'a lapsed heartbeat reads as offline')
    assert.notEqual(res.headers.get('etag'), online.headers.get('etag'))
  })

  it('holds at most AGENT_CACHE_ENTRIES agents and reports hits and misses in /metrics', { skip: !onSqlite && 'the read cache exists on SQLite only' }, async () => {
    const ids = [await create('cache-4'), await create('cache-5'), await create('cache-6'), await create('cache-7')]
    const hitsBefore = await metricValue(srv, 'agentry_agent_cache_lookups_total{result="hit"}')
    for (const id of ids) await getTwice(id)
    const hitsAfter = await metricValue(srv, 'agentry_agent_cache_lookups_total{result="hit"}')
    assert.ok(hitsAfter - hitsBefore >= ids.length, `each second read is a hit (${hitsBefore} -> ${hitsAfter})`)
    assert.equal(await metricSeries(srv, 'agentry_agent_cache_entries'), 3)
  })

  it('a change another process commits to the same SQLite file shows on the next read', { skip: !onSqlite && 'the read cache exists on SQLite only' }, async () => {
    const id = await create('cache-8')
    await getTwice(id)
    const target = srv.services.config.database
    assert.equal(target.kind, 'sqlite')
    if (target.kind !== 'sqlite') return
    // Another connection, as another process would have: the server cannot see this write happen.
    const renameElsewhere = (name: string) => {
      const other = new SQLite(target.file)
      try {
        other.pragma('busy_timeout = 5000')
        other.prepare('update agents set name = ?, version = version + 1 where id = ?').run(name, id)
      } finally {
        other.close()
      }
    }
    renameElsewhere('Changed elsewhere')
    const res = await srv.call('GET', `/agents/${id}`)
    assert.equal(res.body.data.name, 'Changed elsewhere')

    // A write starts from the cached row: after another change elsewhere, it must still build on it.
    renameElsewhere('Changed again elsewhere')
    const put = await srv.call('PUT', `/agents/${id}`, { status: 'online' })
    assert.equal(put.status, 200)
    assert.equal(put.body.data.name, 'Changed again elsewhere')
    assert.equal(put.body.data.status, 'online')
    assert.deepEqual((await srv.call('GET', `/agents/${id}`)).body, put.body)
  })

  it('on PostgreSQL there is no read cache: /metrics shows no entries and no hits', { skip: onSqlite && 'the PostgreSQL leg checks this' }, async () => {
    const id = await create('cache-9')
    await getTwice(id)
    assert.equal(await metricSeries(srv, 'agentry_agent_cache_entries'), 0)
    assert.equal(await metricSeries(srv, 'agentry_agent_cache_lookups_total{result="hit"}'), undefined)
  })
})

describe('GET /agents with the read cache (whole answers kept while nothing is written; on PostgreSQL checked each time)', () => {
  let srv: TestServer
  // The upkeep never runs during these tests: a lapse must show on a list, from the cache too.
  before(async () => { srv = await startTestServer({ PRESENCE_TTL_SECONDS: '1', MAINTENANCE_INTERVAL_MS: '3600000' }) })
  after(async () => { await srv.close() })

  const listHits = async (): Promise<number> => await metricValue(srv, 'agentry_list_cache_lookups_total{result="hit"}')

  /** The list twice: the second answer must be the first, Link header and all. */
  async function listTwice (query = ''): Promise<ApiResponse> {
    const first = await srv.call('GET', `/agents${query}`)
    assert.equal(first.status, 200, JSON.stringify(first.body))
    const second = await srv.call('GET', `/agents${query}`)
    assert.deepEqual(second.body, first.body)
    assert.equal(second.headers.get('link'), first.headers.get('link'))
    assert.equal(second.headers.get('content-type'), 'application/json; charset=utf-8')
    return second
  }
  const names = (res: ApiResponse): string[] => (res.body.data as Array<{ name: string }>).map((a) => a.name)

  it('every write shows on the next list (and in /agents/availability): a create, an update, an upsert, a heartbeat, a delete', async () => {
    const hitsBefore = await listHits()
    assert.deepEqual(names(await listTwice()), [])
    const a = (await srv.call('POST', '/agents', { serviceUserId: 'list-a', name: 'A' })).body.data
    assert.deepEqual(names(await listTwice()), ['A'])
    const b = (await srv.call('POST', '/agents', { serviceUserId: 'list-b', name: 'B' })).body.data
    const firstPage = await listTwice('?limit=1')
    assert.deepEqual(names(firstPage), ['B'])
    assert.match(firstPage.headers.get('link') ?? '', /^<\/api\/external\/v1\/agents\?limit=1&cursor=[^>]+>; rel="next"$/)
    const nextPage = await listTwice(`?limit=1&cursor=${firstPage.body.meta.nextCursor as string}`)
    assert.deepEqual(names(nextPage), ['A'])
    assert.equal(nextPage.headers.get('link'), null)

    assert.equal((await srv.call('PUT', `/agents/${a.id as string}`, { name: 'A renamed' })).status, 200)
    assert.deepEqual(names(await listTwice()), ['B', 'A renamed'])
    assert.deepEqual(names(await listTwice(`?limit=1&cursor=${firstPage.body.meta.nextCursor as string}`)), ['A renamed'])
    assert.equal((await srv.call('PUT', '/agents/by-service-user-id/list-b', { name: 'B upserted' })).status, 200)
    assert.deepEqual(names(await listTwice()), ['B upserted', 'A renamed'])

    assert.deepEqual(names(await listTwice('?status=online')), [])
    assert.deepEqual((await listTwice('/availability')).body.data, { online: 0, available: false })
    // Presence is kept in whole seconds, and lapses here after one: beat early in a second, so it
    // is online for most of one (see the test of GET /agents/:id above).
    while (Date.now() % 1000 > 200) await sleep(20)
    assert.equal((await srv.call('POST', `/agents/${b.id as string}/heartbeat`)).status, 200)
    assert.deepEqual(names(await listTwice('?status=online')), ['B upserted'])
    assert.deepEqual((await listTwice('/availability')).body.data, { online: 1, available: true })
    // A status set directly ends the heartbeat's expiry: nothing lapses during the rest of the tests.
    assert.equal((await srv.call('PUT', `/agents/${b.id as string}`, { status: 'offline' })).status, 200)
    assert.deepEqual((await listTwice('/availability')).body.data, { online: 0, available: false })

    assert.equal((await srv.call('DELETE', `/agents/${a.id as string}`)).status, 200)
    assert.deepEqual(names(await listTwice()), ['B upserted'])
    // On PostgreSQL not the first list of all (see CheckedLists), nor /availability.
    assert.ok(await listHits() - hitsBefore >= (onSqlite ? 10 : 8), 'each second list was answered from memory')
  })

  it('an agent online by heartbeat lists as offline (and is not counted available) once the heartbeat lapses, though nothing wrote since', async () => {
    const c = (await srv.call('POST', '/agents', { serviceUserId: 'list-c', name: 'C' })).body.data
    // Presence is kept in whole seconds (see the test of GET /agents/:id above).
    while (Date.now() % 1000 > 200) await sleep(20)
    assert.equal((await srv.call('POST', `/agents/${c.id as string}/heartbeat`)).status, 200)
    assert.ok(names(await listTwice('?status=online')).includes('C'))
    assert.equal((await listTwice('/availability')).body.data.available, true)
    const deadline = Date.now() + 4000
    let online = await listTwice('?status=online')
    while (names(online).includes('C') && Date.now() < deadline) {
      await sleep(100)
      online = await srv.call('GET', '/agents?status=online')
    }
    assert.ok(!names(online).includes('C'), 'a lapsed heartbeat is not listed as online')
    assert.deepEqual((await listTwice('/availability')).body.data, { online: 0, available: false }, 'nor counted as online')
    const all = await listTwice()
    assert.equal((all.body.data as Array<{ id: string, status: string }>).find((x) => x.id === c.id)?.status, 'offline')
  })

  it('a write in one widget keeps the lists of the others, and shows on the next list of its own', async () => {
    const other = await srv.services.tokens.create('list-other-widget')
    const asOther = { authorization: `Bearer ${other.token}` }
    const otherNames = async (): Promise<string[]> => {
      const first = await srv.call('GET', '/agents', undefined, asOther)
      const second = await srv.call('GET', '/agents', undefined, asOther)
      assert.deepEqual(second.body, first.body)
      return names(second)
    }
    const mine = names(await listTwice())
    assert.deepEqual(await otherNames(), [])

    const x = (await srv.call('POST', '/agents', { serviceUserId: 'other-x', name: 'X' }, asOther)).body.data
    const hitsBefore = await listHits()
    assert.deepEqual(names(await listTwice()), mine)
    assert.equal(await listHits() - hitsBefore, 2, 'this widget\'s list was still kept after a create in another')
    assert.deepEqual(await otherNames(), ['X'])

    const writes: Array<[string, () => Promise<ApiResponse>, string[]]> = [
      ['an update', async () => await srv.call('PUT', `/agents/${x.id as string}`, { name: 'X renamed' }, asOther), ['X renamed']],
      ['an upsert', async () => await srv.call('PUT', '/agents/by-service-user-id/other-y', { name: 'Y' }, asOther), ['Y', 'X renamed']],
      ['a heartbeat', async () => await srv.call('POST', `/agents/${x.id as string}/heartbeat`, undefined, asOther), ['Y', 'X renamed']],
      ['a delete', async () => await srv.call('DELETE', `/agents/${x.id as string}`, undefined, asOther), ['Y']]
    ]
    for (const [what, write, expected] of writes) {
      assert.equal((await write()).status, 200, what)
      const before = await listHits()
      assert.deepEqual(names(await listTwice()), mine, what)
      assert.equal(await listHits() - before, 2, `this widget's list was still kept after ${what} in another`)
      assert.deepEqual(await otherNames(), expected, what)
    }
    // The heartbeat's agent was deleted: nothing is left to lapse in the other widget.

    // And a write in this widget shows on its next list at once.
    assert.equal((await srv.call('POST', '/agents', { serviceUserId: 'list-after-other', name: 'After other' })).status, 200)
    assert.deepEqual(names(await listTwice()), ['After other', ...mine])
  })

  it('a change another process commits (on SQLite to the same file; on PostgreSQL by hand, with no version bump) shows on the next list', async () => {
    const d = (await srv.call('POST', '/agents', { serviceUserId: 'list-d', name: 'D' })).body.data
    for (const query of ['', '?limit=2', '?q=D&active=true']) {
      assert.ok(names(await listTwice(query)).includes('D'), query)
      assert.ok(names(await listTwice(query)).includes('D'), query)
    }
    const hitsBefore = await listHits()
    await renameAgentByHand(srv, d.id as string, 'D elsewhere')
    for (const query of ['', '?limit=2', '?q=D&active=true']) {
      const listed = names(await listTwice(query))
      assert.ok(listed.includes('D elsewhere') && !listed.includes('D'), `${query}: ${JSON.stringify(listed)}`)
    }
    // Each first list after the change read the rows again; each second was kept.
    assert.equal(await listHits() - hitsBefore, 3)
  })

  it('keeps at most 256 answers', async () => {
    // 300 different queries (a name filter each), so 300 different answers.
    for (let i = 1; i <= 300; i++) assert.equal((await srv.call('GET', `/agents?limit=${1 + i % 200}&q=${i}`)).status, 200)
    assert.equal(await metricSeries(srv, 'agentry_list_cache_entries'), 256)
  })

  it('GET /agents/by-service-user-id/:id answers what GET /agents/:id does, and shows every change of the agent or of its serviceUserId', async () => {
    const bySid = async (sid: string): Promise<ApiResponse> => await srv.call('GET', `/agents/by-service-user-id/${sid}`)
    const agentHits = async (): Promise<number> => await metricValue(srv, 'agentry_agent_cache_lookups_total{result="hit"}')
    const e = (await srv.call('POST', '/agents', { serviceUserId: 'sid-e', name: 'E' })).body.data
    const first = await bySid('sid-e')
    const hitsBefore = await agentHits()
    const second = await bySid('sid-e')
    assert.equal(second.status, 200)
    assert.deepEqual(second.body, first.body)
    assert.deepEqual(second.body.data, e)
    const byId = await srv.call('GET', `/agents/${e.id as string}`)
    assert.deepEqual(second.body, byId.body)
    assert.equal(second.headers.get('etag'), byId.headers.get('etag'))
    if (onSqlite) assert.ok(await agentHits() > hitsBefore, 'the second read answered from the read cache')
    const notModified = await fetch(`${srv.api}/agents/by-service-user-id/sid-e`, { headers: { authorization: `Bearer ${srv.token}`, 'if-none-match': second.headers.get('etag') ?? '' } })
    assert.equal(notModified.status, 304)

    const put = await srv.call('PUT', `/agents/${e.id as string}`, { name: 'E renamed' })
    assert.deepEqual((await bySid('sid-e')).body, put.body)
    // Its serviceUserId moves: the old one is no one's, until another agent takes it.
    assert.equal((await srv.call('PUT', `/agents/${e.id as string}`, { serviceUserId: 'sid-e2' })).status, 200)
    assert.equal((await bySid('sid-e')).status, 404)
    assert.equal((await bySid('sid-e2')).body.data.id, e.id)
    const f = (await srv.call('POST', '/agents', { serviceUserId: 'sid-e', name: 'F' })).body.data
    assert.equal((await bySid('sid-e')).body.data.id, f.id)
    // Changed by hand (on SQLite from another connection), then deleted.
    await renameAgentByHand(srv, f.id as string, 'F by hand')
    assert.equal((await bySid('sid-e')).body.data.name, 'F by hand')
    assert.equal((await srv.call('DELETE', `/agents/${f.id as string}`)).status, 200)
    const gone = await bySid('sid-e')
    assert.equal(gone.status, 404)
    assert.equal(gone.body.error.code, 'not_found')
  })

  it('on PostgreSQL /agents/availability is counted afresh every time: /metrics shows no hits for it', { skip: onSqlite && 'the PostgreSQL leg checks this' }, async () => {
    const hitsBefore = await listHits()
    await listTwice('/availability')
    await listTwice('/availability')
    assert.equal(await listHits(), hitsBefore)
  })
})
