import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { startFixtureServer, type FixtureServer } from './helpers/fixtures.js'
import { renameAgentByHand, startTestServer, type ApiResponse, type TestServer } from './helpers/server.js'

/** GET /agents: the seed's whole list, keyset cursor pages with Link headers, and the filters. */

interface ListedAgent {
  id: string
  serviceUserId: string
  name: string
  status: 'online' | 'offline'
  active: boolean
  createdAt: number
  updatedAt: number
  avatar?: object | null
}

type Call = (method: string, path: string, body?: unknown) => Promise<ApiResponse>

const LINK = /^<([^>]+)>; rel="next"$/
const MAX_PAGES = 100

const sleep = async (ms: number) => { await new Promise((resolve) => setTimeout(resolve, ms)) }
const nowSeconds = () => Math.floor(Date.now() / 1000)

/** Waits (at most a second) until the wall clock is past `second`, so later writes get a later timestamp. */
async function pastSecond (second: number): Promise<void> {
  while (nowSeconds() <= second) await sleep(20)
}

const ids = (res: ApiResponse): string[] => (res.body.data as ListedAgent[]).map((a) => a.id)
const names = (res: ApiResponse): string[] => (res.body.data as ListedAgent[]).map((a) => a.name)
const sorted = (xs: string[]): string[] => [...xs].sort()

/** The same API calls made with another widget's token: each describe gets a list of its own. */
function asToken (srv: TestServer, token: string): Call {
  return async (method, path, body) => await srv.call(method, path, body, { authorization: `Bearer ${token}` })
}

async function createAgents (call: Call, prefix: string, count: number, extra: (i: number) => Record<string, unknown> = () => ({})): Promise<ListedAgent[]> {
  const created: ListedAgent[] = []
  for (let i = 0; i < count; i++) {
    const res = await call('POST', '/agents', { serviceUserId: `${prefix}-${i}`, name: `${prefix} ${String(i).padStart(2, '0')}`, ...extra(i) })
    assert.equal(res.status, 200, JSON.stringify(res.body))
    created.push(res.body.data)
  }
  return created
}

function assertValidPage (res: ApiResponse, limit: number): void {
  assert.equal(res.status, 200, JSON.stringify(res.body))
  assert.deepEqual(Object.keys(res.body).sort(), ['data', 'meta', 'status'])
  assert.equal(res.body.status, 200)
  assert.deepEqual(Object.keys(res.body.meta).sort(), ['limit', 'nextCursor'])
  assert.equal(res.body.meta.limit, limit)
  assert.ok(res.body.data.length <= limit)
  const link = res.headers.get('link')
  if (res.body.meta.nextCursor === null) {
    assert.equal(link, null, 'the last page has no Link header')
  } else {
    assert.equal(typeof res.body.meta.nextCursor, 'string')
    assert.equal(res.body.data.length, limit, 'only the last page is short')
    assert.match(link ?? '', LINK)
  }
}

/** Follows meta.nextCursor from the first page (query must include limit or cursor); every page checked. */
async function walkByCursor (call: Call, query: string, limit: number): Promise<ApiResponse[]> {
  const pages: ApiResponse[] = []
  let cursor: string | null = null
  do {
    const res: ApiResponse = await call('GET', `/agents?${query}${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`)
    assertValidPage(res, limit)
    pages.push(res)
    cursor = res.body.meta.nextCursor
    assert.ok(pages.length <= MAX_PAGES, 'the walk ends')
  } while (cursor !== null)
  return pages
}

/** Follows only the Link headers, as a generic HTTP client would. */
async function walkByLink (srv: TestServer, token: string, firstPath: string, limit: number): Promise<ApiResponse[]> {
  const pages: ApiResponse[] = []
  let path: string | undefined = firstPath
  while (path !== undefined) {
    const res = await srv.call('GET', path, undefined, { authorization: `Bearer ${token}` })
    assertValidPage(res, limit)
    pages.push(res)
    const link = res.headers.get('link')
    path = link === null ? undefined : LINK.exec(link)![1]
    assert.ok(pages.length <= MAX_PAGES, 'the walk ends')
  }
  return pages
}

function expectValidationError (res: ApiResponse, field: string): void {
  assert.equal(res.status, 400, JSON.stringify(res.body))
  assert.equal(res.body.status, 400)
  assert.equal(res.body.error.code, 'validation_failed')
  assert.ok(Array.isArray(res.body.error.details), JSON.stringify(res.body))
  assert.ok((res.body.error.details as Array<{ field?: string }>).some((d) => d.field === field), `names ${field}: ${JSON.stringify(res.body.error)}`)
  assert.match(res.body.error.message, new RegExp(field))
}

describe('GET /agents: whole list and cursor pages', () => {
  let srv: TestServer
  let created: ListedAgent[]
  /** Newest first: the reverse of creation order (created one after the other). */
  let newestFirst: string[]

  before(async () => {
    srv = await startTestServer()
    // Every third agent inactive, so a filtered walk has something to skip.
    created = await createAgents(srv.call, 'page', 25, (i) => ({ active: i % 3 !== 0 }))
    newestFirst = created.map((a) => a.id).reverse()
  })
  after(async () => { await srv.close() })

  it('created quickly, several agents share a createdAt second (the tie-break is exercised)', () => {
    assert.ok(new Set(created.map((a) => a.createdAt)).size < created.length)
  })

  it('without limit or cursor: the whole list, newest first, in the seed\'s envelope {status, data} and no Link', async () => {
    const res = await srv.call('GET', '/agents')
    assert.equal(res.status, 200)
    assert.deepEqual(Object.keys(res.body).sort(), ['data', 'status'])
    assert.equal(res.body.status, 200)
    assert.deepEqual(ids(res), newestFirst)
    assert.deepEqual(res.body.data[0], created[created.length - 1])
    assert.equal(res.headers.get('link'), null)
  })

  it('with limit: pages of 7 with meta {nextCursor, limit} visit every agent once, newest first', async () => {
    const pages = await walkByCursor(srv.call, 'limit=7', 7)
    assert.deepEqual(pages.map((p) => p.body.data.length), [7, 7, 7, 4])
    assert.deepEqual(pages.flatMap(ids), newestFirst)
    assert.equal(pages.at(-1)!.body.meta.nextCursor, null)
    assert.equal(pages.at(-1)!.headers.get('link'), null)
  })

  it('when the list ends exactly on a page boundary, that page already says nextCursor null (no empty page)', async () => {
    const pages = await walkByCursor(srv.call, 'limit=5', 5)
    assert.deepEqual(pages.map((p) => p.body.data.length), [5, 5, 5, 5, 5])
    assert.deepEqual(pages.flatMap(ids), newestFirst)
    for (const limit of [25, 200]) {
      const one = await srv.call('GET', `/agents?limit=${limit}`)
      assertValidPage(one, limit)
      assert.deepEqual(ids(one), newestFirst)
      assert.equal(one.body.meta.nextCursor, null)
    }
    const single = await walkByCursor(srv.call, 'limit=1', 1)
    assert.equal(single.length, 25)
    assert.deepEqual(single.flatMap(ids), newestFirst)
  })

  it('the Link header is a relative URL that gives the same next page as meta.nextCursor', async () => {
    let res = await srv.call('GET', '/agents?limit=7')
    for (let n = 0; res.body.meta.nextCursor !== null; n++) {
      assert.ok(n < MAX_PAGES)
      const link = res.headers.get('link')!
      const target = LINK.exec(link)![1]!
      assert.ok(target.startsWith('/api/external/v1/agents?'), `relative URL: ${link}`)
      const viaLink = await fetch(`${srv.url}${target}`, { headers: { authorization: `Bearer ${srv.token}` } })
      assert.equal(viaLink.status, 200)
      const viaCursor = await srv.call('GET', `/agents?limit=7&cursor=${encodeURIComponent(res.body.meta.nextCursor)}`)
      assert.deepEqual(await viaLink.json(), viaCursor.body)
      assert.equal(viaLink.headers.get('link'), viaCursor.headers.get('link'))
      res = viaCursor
    }
  })

  it('the Link header keeps the filters, and walking by Link equals walking by cursor and the unpaginated filtered list', async () => {
    const query = 'active=true&q=PAGE&limit=3'
    const whole = await srv.call('GET', '/agents?active=true&q=PAGE')
    const expected = created.filter((a) => a.active).map((a) => a.id).reverse()
    assert.equal(expected.length, 16)
    assert.deepEqual(ids(whole), expected)

    const byLink = await walkByLink(srv, srv.token, `/api/external/v1/agents?${query}`, 3)
    assert.deepEqual(byLink.flatMap(ids), expected)
    for (const page of byLink.slice(0, -1)) {
      const params = new URL(LINK.exec(page.headers.get('link')!)![1]!, srv.url).searchParams
      assert.equal(params.get('active'), 'true')
      assert.equal(params.get('q'), 'PAGE')
      assert.equal(params.get('limit'), '3')
      assert.equal(params.get('cursor'), page.body.meta.nextCursor)
    }
    const byCursor = await walkByCursor(srv.call, query, 3)
    assert.deepEqual(byCursor.map((p) => p.body), byLink.map((p) => p.body))
  })

  it('limit outside 1..200 or not an integer: 400 validation_failed naming limit', async () => {
    for (const bad of ['0', '201', '-1', 'abc', '1.5', '']) {
      expectValidationError(await srv.call('GET', `/agents?limit=${bad}`), 'limit')
    }
  })

  it('a cursor this API did not give out: 400 validation_failed naming cursor', async () => {
    const forged = [
      'garbage',
      'bm90LWEtY3Vyc29y', // base64url of "not-a-cursor"
      Buffer.from('v1:abc:1').toString('base64url'),
      Buffer.from('v2:1700000000:1').toString('base64url'),
      '%%%'
    ]
    for (const cursor of forged) {
      expectValidationError(await srv.call('GET', `/agents?cursor=${encodeURIComponent(cursor)}`), 'cursor')
      expectValidationError(await srv.call('GET', `/agents?limit=5&cursor=${encodeURIComponent(cursor)}`), 'cursor')
    }
    expectValidationError(await srv.call('GET', '/agents?cursor='), 'cursor')
  })
})

describe('GET /agents: a cursor stays correct while agents are created and updated between pages', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer() })
  after(async () => { await srv.close() })

  it('no agent that existed at the start is skipped or repeated; agents created meanwhile do not appear; deletions do not shift pages', async () => {
    const { token } = await srv.services.tokens.create('stability')
    const call = asToken(srv, token)
    const original = await createAgents(call, 'stable', 20)
    const expected = original.map((a) => a.id).reverse()

    const first = await call('GET', '/agents?limit=6')
    assertValidPage(first, 6)
    assert.deepEqual(ids(first), expected.slice(0, 6))

    // Meanwhile: new agents (newer than the cursor; likely in the same second as it) ...
    const fresh = await createAgents(call, 'fresh', 5)
    // ... and changes to agents on later pages (and one already seen), including status.
    const byIndex = (i: number) => original[i]!.id
    for (const [i, change] of [[2, { name: 'Renamed two', status: 'online' }], [7, { name: 'Renamed seven' }], [11, { status: 'online', active: false }], [16, { name: 'Renamed sixteen' }]] as const) {
      const res = await call('PUT', `/agents/${byIndex(i)}`, change)
      assert.equal(res.status, 200)
    }

    // ... and deletions: the agent the cursor points after (last of page 1) and one on a later page.
    const anchor = ids(first).at(-1)!
    assert.equal((await call('DELETE', `/agents/${anchor}`)).status, 200)
    assert.equal((await call('DELETE', `/agents/${byIndex(4)}`)).status, 200)

    const rest: ApiResponse[] = []
    let cursor: string | null = first.body.meta.nextCursor
    while (cursor !== null) {
      const res = await call('GET', `/agents?limit=6&cursor=${encodeURIComponent(cursor)}`)
      assertValidPage(res, 6)
      rest.push(res)
      cursor = res.body.meta.nextCursor
      assert.ok(rest.length <= MAX_PAGES)
    }
    const seen = [...ids(first), ...rest.flatMap(ids)]
    assert.deepEqual(seen, expected.filter((id) => id !== byIndex(4)), 'every original agent exactly once, in order (less the one deleted ahead)')
    for (const a of fresh) assert.ok(!seen.includes(a.id), 'agents created after page 1 are newer than the cursor')

    // The later pages show the agents as they are now.
    const later = rest.flatMap((p) => p.body.data as ListedAgent[])
    assert.equal(later.find((a) => a.id === byIndex(2))!.name, 'Renamed two')
    assert.equal(later.find((a) => a.id === byIndex(2))!.status, 'online')
    assert.equal(later.find((a) => a.id === byIndex(7))!.name, 'Renamed seven')
    assert.equal(later.find((a) => a.id === byIndex(11))!.active, false)

    // A fresh walk from the start shows the new agents first, then everyone else once.
    const all = await walkByCursor(call, 'limit=6', 6)
    assert.deepEqual(all.flatMap(ids), [...fresh.map((a) => a.id).reverse(), ...expected.filter((id) => id !== anchor && id !== byIndex(4))])
  })
})

describe('GET /agents: cursor alone uses the default page size', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer() })
  after(async () => { await srv.close() })

  it('cursor without limit: pages of 50; without either the whole list (not capped at 50)', async () => {
    const created = await createAgents(srv.call, 'many', 60)
    const expected = created.map((a) => a.id).reverse()

    const whole = await srv.call('GET', '/agents')
    assert.deepEqual(Object.keys(whole.body).sort(), ['data', 'status'])
    assert.deepEqual(ids(whole), expected)

    const start = await srv.call('GET', '/agents?limit=2')
    assertValidPage(start, 2)
    const second = await srv.call('GET', `/agents?cursor=${encodeURIComponent(start.body.meta.nextCursor)}`)
    assertValidPage(second, 50)
    assert.equal(second.body.meta.limit, 50)
    assert.equal(second.body.data.length, 50)
    assert.deepEqual(ids(second), expected.slice(2, 52))
    const link = new URL(LINK.exec(second.headers.get('link')!)![1]!, srv.url)
    assert.equal(link.searchParams.get('limit'), '50')

    const third = await srv.call('GET', `/agents?cursor=${encodeURIComponent(second.body.meta.nextCursor)}`)
    assertValidPage(third, 50)
    assert.deepEqual(ids(third), expected.slice(52))
    assert.equal(third.body.meta.nextCursor, null)
  })
})

describe('GET /agents without limit or cursor: a long list is sent as it is read, batch by batch', () => {
  // Batches of 4 (LIST_BATCH is 1,000), so a short list takes several.
  const BATCH = 4
  let srv: TestServer
  let call: Call
  let token: string
  let created: ListedAgent[]

  before(async () => {
    srv = await startTestServer({}, { listBatchSize: BATCH })
    token = (await srv.services.tokens.create('batches')).token
    call = asToken(srv, token)
    created = await createAgents(call, 'batch', 18, (i) => ({ active: i % 3 !== 0, status: i % 2 === 0 ? 'online' : 'offline' }))
  })
  after(async () => { await srv.close() })

  it('every agent once, newest first, in the seed\'s envelope, the same agents as the cursor pages show', async () => {
    const whole = await call('GET', '/agents')
    assert.equal(whole.status, 200)
    assert.match(whole.headers.get('content-type') ?? '', /^application\/json/)
    assert.deepEqual(Object.keys(whole.body).sort(), ['data', 'status'])
    assert.equal(whole.body.status, 200)
    assert.deepEqual(ids(whole), created.map((a) => a.id).reverse())
    const pages = await walkByCursor(call, 'limit=5', 5)
    assert.deepEqual(whole.body.data, pages.flatMap((p) => p.body.data as ListedAgent[]))
    assert.deepEqual(whole.body.data.at(-1), created[0], 'each agent as GET /agents/:id shows it')
  })

  it('filters hold across batches, including a list that ends exactly on a batch boundary', async () => {
    for (const query of ['active=true', 'active=false', 'status=online', 'status=offline&active=true', 'q=batch%201']) {
      const whole = await call('GET', `/agents?${query}`)
      assert.equal(whole.status, 200, `${query}: ${JSON.stringify(whole.body)}`)
      const pages = await walkByCursor(call, `${query}&limit=3`, 3)
      assert.deepEqual(ids(whole), pages.flatMap(ids), query)
    }
    // 12 of the 18 are active: three whole batches, then nothing.
    assert.equal(ids(await call('GET', '/agents?active=true')).length, 3 * BATCH)
  })

  it('a list longer than a batch is streamed (no Content-Length); a shorter one is sent whole, with its length', async () => {
    const long = await fetch(`${srv.api}/agents`, { headers: { authorization: `Bearer ${token}` } })
    assert.equal(long.status, 200)
    assert.equal(long.headers.get('content-length'), null)
    assert.equal(long.headers.get('transfer-encoding'), 'chunked')
    assert.equal((JSON.parse(await long.text()) as { data: unknown[] }).data.length, created.length)
    const short = await call('GET', '/agents?active=false&status=online')
    assert.ok(short.body.data.length < BATCH)
    assert.notEqual(short.headers.get('content-length'), null)
  })

  it('an empty list is an empty array', async () => {
    const res = await call('GET', '/agents?q=nobody')
    assert.equal(res.status, 200)
    assert.deepEqual(res.body, { status: 200, data: [] })
  })
})

describe('GET /agents: every agent as its row reads now (the JSON made for a row is reused only while the row reads the same)', () => {
  let srv: TestServer
  let fx: FixtureServer
  let call: Call
  let created: ListedAgent[]

  before(async () => {
    srv = await startTestServer()
    fx = await startFixtureServer()
    call = asToken(srv, (await srv.services.tokens.create('reused-json')).token)
    created = await createAgents(call, 'reused', 3, (i) => (i === 0 ? { avatar: `${fx.url}/photo.jpg` } : {}))
  })
  after(async () => {
    await srv.close()
    await fx.close()
  })

  // Both ways of listing: the whole list, and one page.
  const lists = async (): Promise<ListedAgent[][]> => [(await call('GET', '/agents')).body.data, (await call('GET', '/agents?limit=10')).body.data]
  const byId = (list: ListedAgent[], id: string): ListedAgent => list.find((a) => a.id === id) as ListedAgent

  it('a change made through the API, another instance or by hand in the database shows in the very next list', async () => {
    const [withAvatar, renamed, flipped] = created as [ListedAgent, ListedAgent, ListedAgent]
    for (const list of await lists()) assert.deepEqual([...list].reverse(), created, 'each as it was created (and as the JSON is now kept)')

    // By hand in the database: no version bump, no updatedAt, nothing this instance could have seen.
    await renameAgentByHand(srv, renamed.id, 'Renamed by hand')
    assert.equal((await call('PUT', `/agents/${flipped.id}`, { status: 'online' })).status, 200)
    assert.equal((await call('PUT', `/agents/${withAvatar.id}`, { avatar: null })).status, 200)
    for (const list of await lists()) {
      assert.equal(byId(list, renamed.id).name, 'Renamed by hand')
      assert.equal(byId(list, flipped.id).status, 'online')
      assert.equal(byId(list, withAvatar.id).avatar, null)
    }
    // And again with a new avatar: the new record's URLs, as GET /agents/:id shows them.
    const put = await call('PUT', `/agents/${withAvatar.id}`, { avatar: `${fx.url}/photo.png` })
    assert.equal(put.status, 200)
    for (const list of await lists()) assert.deepEqual(byId(list, withAvatar.id), put.body.data)
    assert.equal(put.body.data.avatar.info.ext, 'png')
  })
})

describe('GET /agents: filters', () => {
  let srv: TestServer
  let call: Call
  let token: string
  const agents = new Map<string, ListedAgent>()
  const spec = [
    { serviceUserId: 'f-emile', name: 'Émile Zola', status: 'online', active: true },
    { serviceUserId: 'f-emile-caps', name: 'ÉMILE', status: 'offline', active: false },
    { serviceUserId: 'f-strasse', name: 'Straße', status: 'online', active: false },
    { serviceUserId: 'f-olaf', name: 'Ölaf', status: 'offline', active: true },
    { serviceUserId: 'f-percent', name: '100% sure_thing', status: 'offline', active: true },
    { serviceUserId: 'f-underscore', name: 'under_score', status: 'online', active: true },
    { serviceUserId: 'f-backslash', name: 'C:\\Agents', status: 'offline', active: true },
    // "É" written as E + combining acute accent: the same name to a reader.
    { serviceUserId: 'f-elodie', name: 'E\u0301lodie', status: 'online', active: true },
    { serviceUserId: 'f-plain', name: 'Plain Person', status: 'offline', active: false },
    { serviceUserId: 'f-greek', name: 'Οδυσσέας Ελύτης', status: 'offline', active: false }
  ] as const
  const bySuid = (...suids: string[]) => suids.map((s) => agents.get(s)!.id)
  /** The expected result of a filter, in list order (newest first: reverse of creation). */
  const expectIds = (pred: (a: ListedAgent) => boolean) => [...agents.values()].filter(pred).map((a) => a.id).reverse()

  before(async () => {
    srv = await startTestServer()
    // A widget of its own, so the test token's widget (other describes) cannot leak in.
    token = (await srv.services.tokens.create('filters')).token
    call = asToken(srv, token)
    for (const s of spec) {
      const res = await call('POST', '/agents', s)
      assert.equal(res.status, 200, JSON.stringify(res.body))
      agents.set(s.serviceUserId, res.body.data)
    }
    // Noise in another widget: never listed here.
    await srv.call('POST', '/agents', { serviceUserId: 'f-emile', name: 'Émile Elsewhere', status: 'online' })
  })
  after(async () => { await srv.close() })

  it('status=online|offline', async () => {
    for (const status of ['online', 'offline'] as const) {
      const res = await call('GET', `/agents?status=${status}`)
      assert.equal(res.status, 200)
      assert.deepEqual(Object.keys(res.body).sort(), ['data', 'status'])
      assert.deepEqual(ids(res), expectIds((a) => a.status === status))
      assert.ok(res.body.data.length > 0)
    }
  })

  it('active=true|false', async () => {
    for (const [value, active] of [['true', true], ['false', false]] as const) {
      const res = await call('GET', `/agents?active=${value}`)
      assert.equal(res.status, 200)
      assert.deepEqual(ids(res), expectIds((a) => a.active === active))
    }
  })

  it('serviceUserId matches exactly (not a prefix, not case-folded)', async () => {
    assert.deepEqual(ids(await call('GET', '/agents?serviceUserId=f-emile')), bySuid('f-emile'))
    assert.deepEqual(ids(await call('GET', '/agents?serviceUserId=f-emile-caps')), bySuid('f-emile-caps'))
    assert.deepEqual(ids(await call('GET', '/agents?serviceUserId=F-EMILE')), [])
    assert.deepEqual(ids(await call('GET', '/agents?serviceUserId=f-')), [])
    assert.deepEqual(ids(await call('GET', '/agents?serviceUserId=nobody')), [])
  })

  it('q: name contains, ignoring case, Unicode-aware', async () => {
    const q = async (value: string) => sorted(names(await call('GET', `/agents?q=${encodeURIComponent(value)}`)))
    assert.deepEqual(await q('émile'), sorted(['Émile Zola', 'ÉMILE']))
    assert.deepEqual(await q('ÉMILE'), sorted(['Émile Zola', 'ÉMILE']))
    assert.deepEqual(await q('e\u0301mile'), sorted(['Émile Zola', 'ÉMILE']), 'decomposed accent in the query')
    assert.deepEqual(await q('zo'), ['Émile Zola'])
    assert.deepEqual(await q('ZOLA'), ['Émile Zola'])
    assert.deepEqual(await q('straße'), ['Straße'])
    assert.deepEqual(await q('STRASSE'), ['Straße'], 'full case folding: ß is ss')
    assert.deepEqual(await q('STRAẞE'), ['Straße'], 'capital sharp s')
    assert.deepEqual(await q('ölaf'), ['Ölaf'])
    assert.deepEqual(await q('ÖLAF'), ['Ölaf'])
    assert.deepEqual(await q('olaf'), [], 'accents matter: ö is not o')
    assert.deepEqual(await q('élodie'), ['E\u0301lodie'], 'decomposed accent in the stored name')
    assert.deepEqual(await q('nobody here'), [])
  })

  it('q: an upper-case Greek query ending in Σ finds the name as its lower-case form does', async () => {
    const q = async (value: string) => names(await call('GET', `/agents?q=${encodeURIComponent(value)}`))
    assert.deepEqual(await q('οδυσ'), ['Οδυσσέας Ελύτης'])
    assert.deepEqual(await q('ΟΔΥΣ'), ['Οδυσσέας Ελύτης'])
    assert.deepEqual(await q('ΟΔΥΣΣΈΑΣ'), ['Οδυσσέας Ελύτης'])
  })

  it('q: % _ and \\ are literal characters, not wildcards', async () => {
    const q = async (value: string) => sorted(names(await call('GET', `/agents?q=${encodeURIComponent(value)}`)))
    assert.deepEqual(await q('%'), ['100% sure_thing'])
    assert.deepEqual(await q('_'), sorted(['100% sure_thing', 'under_score']))
    assert.deepEqual(await q('0%'), ['100% sure_thing'])
    assert.deepEqual(await q('% s'), ['100% sure_thing'])
    assert.deepEqual(await q('%s'), [])
    assert.deepEqual(await q('0_s'), [], '_ is not "any character"')
    assert.deepEqual(await q('r_s'), ['under_score'])
    assert.deepEqual(await q('\\'), ['C:\\Agents'])
    assert.deepEqual(await q('C:\\A'), ['C:\\Agents'])
  })

  it('filters combine with AND', async () => {
    const res = await call('GET', '/agents?status=online&active=true&q=e')
    assert.deepEqual(ids(res), expectIds((a) => a.status === 'online' && a.active && a.name.normalize('NFKC').toLowerCase().includes('e')))
    assert.deepEqual(sorted(names(res)), sorted(['Émile Zola', 'under_score', 'E\u0301lodie']))
    assert.deepEqual(ids(await call('GET', '/agents?status=offline&q=%C3%A9mile')), bySuid('f-emile-caps'))
    assert.deepEqual(ids(await call('GET', '/agents?status=online&serviceUserId=f-emile-caps')), [])
    assert.deepEqual(ids(await call('GET', '/agents?active=false&serviceUserId=f-strasse&q=stra')), bySuid('f-strasse'))
  })

  it('filters with pagination: Link keeps every filter, percent-encoded, and the pages add up to the filtered list', async () => {
    const query = `status=online&active=true&q=${encodeURIComponent('é')}&limit=1`
    const pages = await walkByLink(srv, token, `/api/external/v1/agents?${query}`, 1)
    assert.deepEqual(pages.flatMap(ids), bySuid('f-elodie', 'f-emile'))
    const params = new URL(LINK.exec(pages[0]!.headers.get('link')!)![1]!, srv.url).searchParams
    assert.deepEqual(Object.fromEntries(params), { status: 'online', active: 'true', q: 'é', limit: '1', cursor: pages[0]!.body.meta.nextCursor })

    const percent = await walkByLink(srv, token, `/api/external/v1/agents?q=${encodeURIComponent('_')}&limit=1`, 1)
    assert.deepEqual(percent.flatMap(ids), bySuid('f-underscore', 'f-percent'))

    // A space (form-encoded as + in the Link) and a literal % survive the round trip.
    const spaced = await walkByLink(srv, token, `/api/external/v1/agents?q=${encodeURIComponent(' ')}&limit=1`, 1)
    assert.deepEqual(spaced.flatMap(ids), expectIds((a) => a.name.includes(' ')))
    assert.equal(spaced.length, 4)
    const literal = await walkByLink(srv, token, `/api/external/v1/agents?q=${encodeURIComponent('% ')}&limit=1`, 1)
    assert.deepEqual(literal.flatMap(ids), bySuid('f-percent'))
  })

  it('updatedSince: only agents updated at or after that second (incremental sync), with pagination too', async () => {
    const all = [...agents.values()]
    const lastWrite = Math.max(...all.map((a) => a.updatedAt))
    assert.deepEqual(ids(await call('GET', '/agents?updatedSince=0')), expectIds(() => true))
    assert.deepEqual(ids(await call('GET', `/agents?updatedSince=${lastWrite + 1}`)), [])

    await pastSecond(lastWrite)
    const a = await call('PUT', `/agents/${agents.get('f-olaf')!.id}`, { name: 'Ölaf Renamed' })
    const b = await call('PUT', `/agents/${agents.get('f-plain')!.id}`, { status: 'online' })
    const unchanged = await call('PUT', `/agents/${agents.get('f-strasse')!.id}`, { name: 'Straße' })
    assert.equal(unchanged.body.data.updatedAt, agents.get('f-strasse')!.updatedAt, 'a PUT that changes nothing is not a change')
    const since = a.body.data.updatedAt as number
    assert.ok(since > lastWrite)
    assert.ok(b.body.data.updatedAt >= since)

    const changed = await call('GET', `/agents?updatedSince=${since}`)
    assert.deepEqual(ids(changed), bySuid('f-plain', 'f-olaf'), 'at or after: the boundary second is included')
    assert.deepEqual(changed.body.data, [b.body.data, a.body.data])
    assert.deepEqual(ids(await call('GET', `/agents?updatedSince=${lastWrite}`)), expectIds((x) => x.updatedAt >= lastWrite || x.serviceUserId === 'f-olaf' || x.serviceUserId === 'f-plain'))

    const pages = await walkByCursor(call, `updatedSince=${since}&limit=1`, 1)
    assert.deepEqual(pages.flatMap(ids), bySuid('f-plain', 'f-olaf'))
    assert.ok(new URL(LINK.exec(pages[0]!.headers.get('link')!)![1]!, srv.url).searchParams.get('updatedSince') === String(since))
    assert.deepEqual(ids(await call('GET', `/agents?updatedSince=${since}&status=online`)), bySuid('f-plain'))
    assert.deepEqual(ids(await call('GET', '/agents?updatedSince=99999999999')), [])
  })

  it('an unknown status, a bad active or updatedSince, an empty q, an unknown parameter: 400 naming it', async () => {
    expectValidationError(await call('GET', '/agents?status=away'), 'status')
    expectValidationError(await call('GET', '/agents?status=ONLINE'), 'status')
    expectValidationError(await call('GET', '/agents?active=maybe'), 'active')
    expectValidationError(await call('GET', '/agents?updatedSince=yesterday'), 'updatedSince')
    expectValidationError(await call('GET', '/agents?updatedSince=-5'), 'updatedSince')
    // Past 2^53 (and past PostgreSQL's bigint, where it was a 500 while SQLite answered 200).
    expectValidationError(await call('GET', '/agents?updatedSince=99999999999999999999'), 'updatedSince')
    expectValidationError(await call('GET', '/agents?q='), 'q')
    expectValidationError(await call('GET', '/agents?foo=1'), 'foo')
    expectValidationError(await call('GET', '/agents?limit=5&sort=name'), 'sort')
  })
})
