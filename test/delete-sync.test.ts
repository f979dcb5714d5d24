import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { COLLECT_AT_ONCE, startTestServer, type TestServer } from './helpers/server.js'
import { startFixtureServer, type FixtureServer } from './helpers/fixtures.js'
import { until } from './helpers/process.js'

describe('DELETE /agents/:id', () => {
  let srv: TestServer
  let fx: FixtureServer
  before(async () => {
    fx = await startFixtureServer()
    srv = await startTestServer(COLLECT_AT_ONCE)
  })
  after(async () => {
    await srv.close()
    await fx.close()
  })

  it('removes the agent and answers with it; deleting again is a 404', async () => {
    const { body: { data: a } } = await srv.call('POST', '/agents', { serviceUserId: 'del-1', name: 'Gone' })
    const del = await srv.call('DELETE', `/agents/${a.id}`)
    assert.equal(del.status, 200)
    assert.deepEqual(del.body, { status: 200, data: a })
    assert.equal((await srv.call('GET', `/agents/${a.id}`)).status, 404)
    const again = await srv.call('DELETE', `/agents/${a.id}`)
    assert.equal(again.status, 404)
    assert.equal(again.body.error.code, 'not_found')
    assert.ok(!(await srv.call('GET', '/agents')).body.data.some((x: { id: string }) => x.id === a.id))
    // The serviceUserId is free again.
    assert.equal((await srv.call('POST', '/agents', { serviceUserId: 'del-1', name: 'Back' })).status, 200)
  })

  it('avatar files go once nothing else refers to their content', async () => {
    const one = await srv.call('POST', '/agents', { serviceUserId: 'gc-1', name: 'One', avatar: `${fx.url}/photo.png` })
    const two = await srv.call('POST', '/agents', { serviceUserId: 'gc-2', name: 'Two', avatar: `${fx.url}/photo.png` })
    const path = one.body.data.avatar.info.path as string
    assert.equal(two.body.data.avatar.info.path, path, 'shared content')
    const keys = [path.slice(1), `120x120${path}`, `520x400${path}`]
    const present = async () => { const files = await srv.storedFiles(); return keys.every((k) => files.includes(k)) }
    assert.equal(await present(), true)

    assert.equal((await srv.call('DELETE', `/agents/${one.body.data.id}`)).status, 200)
    await new Promise((resolve) => setTimeout(resolve, 500))
    assert.equal(await present(), true, 'still used by the other agent')
    assert.equal((await fetch(two.body.data.avatar.url.default)).status, 200)

    assert.equal((await srv.call('DELETE', `/agents/${two.body.data.id}`)).status, 200)
    await until('the files to be collected', async () => {
      const files = await srv.storedFiles()
      return keys.every((k) => !files.includes(k)) ? true : undefined
    }, 5000, 100)
  })

  it('a write that fails after its avatar was stored leaves no files behind', async () => {
    const before = await srv.storedFiles()
    const unchanged = async () => {
      const files = await srv.storedFiles()
      return files.length === before.length && files.every((f, i) => f === before[i]) ? true : undefined
    }
    // No such agent: the image is downloaded and stored before the row is looked for.
    const missing = await srv.call('PUT', '/agents/00000000-0000-4000-8000-000000000000', { avatar: `${fx.url}/anim.gif` })
    assert.equal(missing.status, 404)
    await until('the stored files of the refused write to be collected', unchanged, 5000, 100)

    // If-Match not met.
    const a = await srv.call('POST', '/agents', { serviceUserId: 'gc-412', name: 'Guarded' })
    const withAgent = await srv.storedFiles()
    assert.deepEqual(withAgent, before, 'no avatar, no files')
    const stale = await srv.call('PUT', `/agents/${a.body.data.id}`, { avatar: `${fx.url}/rotated.jpg` }, { 'if-match': '"not-the-current-etag"' })
    assert.equal(stale.status, 412)
    await until('the stored files of the refused write to be collected', unchanged, 5000, 100)
    assert.equal((await srv.call('GET', `/agents/${a.body.data.id}`)).body.data.avatar, null)
  })

  it('replacing or removing an avatar lets its old files go too', async () => {
    const a = await srv.call('POST', '/agents', { serviceUserId: 'gc-3', name: 'Three', avatar: `${fx.url}/photo.webp` })
    const old = a.body.data.avatar.info.path as string
    await srv.call('PUT', `/agents/${a.body.data.id}`, { avatar: null })
    await until('the old files to be collected', async () => ((await srv.storedFiles()).includes(old.slice(1)) ? undefined : true), 5000, 100)
  })
})

describe('sync by the integrator\'s own id', () => {
  let srv: TestServer
  let fx: FixtureServer
  const path = (id: string) => `/agents/by-service-user-id/${encodeURIComponent(id)}`
  before(async () => {
    fx = await startFixtureServer()
    srv = await startTestServer()
  })
  after(async () => {
    await srv.close()
    await fx.close()
  })

  it('PUT creates, then updates; GET reads one', async () => {
    const created = await srv.call('PUT', path('crm-42'), { name: 'Ada', status: 'online' })
    assert.equal(created.status, 200)
    assert.equal(created.body.meta.created, true)
    assert.equal(created.body.data.serviceUserId, 'crm-42')
    assert.equal(created.body.data.active, true)

    const updated = await srv.call('PUT', path('crm-42'), { name: 'Ada Lovelace' })
    assert.equal(updated.body.meta.created, false)
    assert.equal(updated.body.data.id, created.body.data.id)
    assert.equal(updated.body.data.name, 'Ada Lovelace')
    assert.equal(updated.body.data.status, 'online')

    const got = await srv.call('GET', path('crm-42'))
    assert.deepEqual(got.body, { status: 200, data: updated.body.data })
    assert.equal((await srv.call('GET', path('nobody'))).status, 404)
  })

  it('ids with slashes, spaces and Unicode work in the path', async () => {
    for (const id of ['a/b', 'with space', 'ünï-cödé', '12345']) {
      const res = await srv.call('PUT', path(id), { name: 'X' })
      assert.equal(res.status, 200, id)
      assert.equal(res.body.data.serviceUserId, id)
      assert.equal((await srv.call('GET', path(id))).body.data.id, res.body.data.id)
    }
  })

  it('re-running the same sync changes nothing: not updatedAt, not the avatar, no download', async () => {
    const input = { name: 'Grace', status: 'offline', active: true, avatar: `${fx.url}/photo.jpg` }
    const first = await srv.call('PUT', path('crm-7'), input)
    assert.equal(first.status, 200)
    const downloads = fx.hits.get('/photo.jpg') ?? 0
    await new Promise((resolve) => setTimeout(resolve, 1100))
    const second = await srv.call('PUT', path('crm-7'), input)
    assert.deepEqual(second.body.data, first.body.data)
    assert.equal(second.headers.get('etag'), first.headers.get('etag'))
    assert.equal(fx.hits.get('/photo.jpg') ?? 0, downloads, 'an unchanged avatar URL is not downloaded again')

    const refreshed = await srv.call('PUT', `${path('crm-7')}?refreshAvatar=true`, input)
    assert.equal(fx.hits.get('/photo.jpg'), downloads + 1, 'refreshAvatar=true downloads again')
    assert.deepEqual(refreshed.body.data, first.body.data, 'the same bytes are still no change')

    const changed = await srv.call('PUT', path('crm-7'), { ...input, avatar: `${fx.url}/photo.png` })
    assert.equal(changed.body.data.avatar.info.ext, 'png')
    assert.ok(changed.body.data.updatedAt > first.body.data.updatedAt)
  })

  it('creating needs a name; a different serviceUserId in the body is refused', async () => {
    const noName = await srv.call('PUT', path('crm-new'), { status: 'online' })
    assert.equal(noName.status, 400)
    assert.deepEqual(noName.body.error.details, [{ field: 'name', message: 'is required to create an agent' }])
    const mismatch = await srv.call('PUT', path('crm-new'), { name: 'X', serviceUserId: 'other' })
    assert.equal(mismatch.status, 400)
    assert.equal(mismatch.body.error.details[0].field, 'serviceUserId')
    assert.equal((await srv.call('GET', path('crm-new'))).status, 404, 'nothing was created')
  })

  it('concurrent syncs of one new id create exactly one agent', async () => {
    const results = await Promise.all(Array.from({ length: 6 }, (_, i) => srv.call('PUT', path('crm-race'), { name: `Racer ${i % 2}` })))
    assert.ok(results.every((r) => r.status === 200), results.map((r) => r.status).join(','))
    assert.equal(results.filter((r) => r.body.meta.created === true).length, 1)
    assert.equal(new Set(results.map((r) => r.body.data.id)).size, 1)
  })
})

describe('the file collector and a write of the same image at the same moment', () => {
  let srv: TestServer
  let fx: FixtureServer
  /** Armed by the test: the next collection stops, once it has claimed content, until released. */
  let pause: { entered: () => void, released: Promise<void> } | undefined
  before(async () => {
    fx = await startFixtureServer()
    srv = await startTestServer(COLLECT_AT_ONCE, {
      beforeCollect: async () => {
        const p = pause
        if (p === undefined) return
        pause = undefined
        p.entered()
        await p.released
      }
    })
  })
  after(async () => {
    await srv.close()
    await fx.close()
  })

  it('a write that refers to content being collected has its files when it is answered', async () => {
    const a = await srv.call('POST', '/agents', { serviceUserId: 'race-a', name: 'A', avatar: `${fx.url}/photo.jpg` })
    assert.equal(a.status, 200)
    const whole = await Promise.all(Object.values<string>(a.body.data.avatar.url).map(async (u) => Buffer.from(await (await fetch(u)).arrayBuffer())))

    let entered = (): void => {}
    const inCollector = new Promise<void>((resolve) => { entered = resolve })
    let release = (): void => {}
    pause = { entered, released: new Promise<void>((resolve) => { release = resolve }) }
    assert.equal((await srv.call('DELETE', `/agents/${a.body.data.id}`)).status, 200)
    await inCollector
    // The collector has claimed the content and is about to delete its files; the same image comes
    // in now, finds its files still there, and goes on to write its row.
    const pending = srv.call('POST', '/agents', { serviceUserId: 'race-b', name: 'B', avatar: `${fx.url}/photo-copy.jpg` })
    await new Promise((resolve) => setTimeout(resolve, 300))
    release()
    const b = await pending
    assert.equal(b.status, 200, JSON.stringify(b.body))
    assert.equal(b.body.data.avatar.info.path, a.body.data.avatar.info.path)
    // Later passes of the collector must not take them either.
    await new Promise((resolve) => setTimeout(resolve, 400))
    for (const [i, url] of Object.values<string>(b.body.data.avatar.url).entries()) {
      const res = await fetch(url)
      assert.equal(res.status, 200, `${url} is there`)
      assert.ok(Buffer.from(await res.arrayBuffer()).equals(whole[i] as Buffer), `${url} is whole`)
    }
  })
})
