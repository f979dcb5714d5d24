import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { COLLECT_AT_ONCE, serversForSuite, startTestServer, type TestServer } from './helpers/server.js'
import { startFixtureServer, type FixtureServer } from './helpers/fixtures.js'
import { until } from './helpers/process.js'

describe('DELETE /agents/:id', () => {
  let srv: TestServer
  let fx: FixtureServer
  serversForSuite((s, f) => { srv = s; fx = f }, COLLECT_AT_ONCE)

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
  serversForSuite((s, f) => { srv = s; fx = f })

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

  it('ids of the longest length allowed (255 characters) work in the path, whatever their characters', async () => {
    for (const id of ['x'.repeat(255), '/'.repeat(255), '%'.repeat(255), '\u{1F600}'.repeat(255)]) {
      const res = await srv.call('PUT', path(id), { name: 'Long' })
      assert.equal(res.status, 200, JSON.stringify(res.body))
      assert.equal(res.body.data.serviceUserId, id)
      assert.equal((await srv.call('GET', path(id))).body.data.id, res.body.data.id)
    }
    const tooLong = await srv.call('PUT', path('/'.repeat(256)), { name: 'Longer' })
    assert.equal(tooLong.status, 400)
    assert.equal(tooLong.body.error.code, 'validation_failed')
    assert.match(tooLong.body.error.message, /serviceUserId must be at most 255 characters/)
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
  /**
   * Armed by a test: the next collection, once it has claimed content, stops until released (or,
   * with fail, fails as a store that refuses the deletion would).
   */
  let pause: { entered: () => void, released: Promise<void>, fail?: boolean } | undefined
  before(async () => {
    fx = await startFixtureServer()
    srv = await startTestServer(COLLECT_AT_ONCE, {
      beforeCollect: async () => {
        const p = pause
        if (p === undefined) return
        pause = undefined
        p.entered()
        await p.released
        if (p.fail === true) throw new Error('the store refused the deletion (test)')
      }
    })
  })
  after(async () => {
    await srv.close()
    await fx.close()
  })

  /** Arms the pause; resolves (with the release) once the collector has claimed content and stopped. */
  const armPause = (fail = false): { inCollector: Promise<void>, release: () => void } => {
    let entered = (): void => {}
    const inCollector = new Promise<void>((resolve) => { entered = resolve })
    let release = (): void => {}
    pause = { entered, released: new Promise<void>((resolve) => { release = resolve }), fail }
    return { inCollector, release }
  }

  /** The agent's three files, fetched as a browser would. */
  const filesOf = async (agent: { avatar: { url: Record<string, string> } }): Promise<Buffer[]> =>
    await Promise.all(Object.values(agent.avatar.url).map(async (u) => {
      const res = await fetch(u)
      assert.equal(res.status, 200, `${u} is there`)
      return Buffer.from(await res.arrayBuffer())
    }))

  it('reads and writes of other agents go on while the collector deletes files', async () => {
    const a = await srv.call('POST', '/agents', { serviceUserId: 'busy-a', name: 'A', avatar: `${fx.url}/photo.png` })
    assert.equal(a.status, 200)
    const other = await srv.call('POST', '/agents', { serviceUserId: 'busy-other', name: 'Other' })
    const { inCollector, release } = armPause()
    try {
      assert.equal((await srv.call('DELETE', `/agents/${a.body.data.id}`)).status, 200)
      await inCollector
      // The collector holds its claim and waits (as on a slow bucket); nothing else may wait for it.
      const meanwhile = Promise.all([
        srv.call('POST', '/agents', { serviceUserId: 'busy-b', name: 'B' }),
        srv.call('PUT', `/agents/${other.body.data.id}`, { status: 'online' }),
        srv.call('GET', `/agents/${other.body.data.id}`),
        srv.call('GET', '/agents')
      ])
      const answered = await Promise.race([meanwhile, new Promise<undefined>((resolve) => setTimeout(() => { resolve(undefined) }, 5000))])
      assert.ok(answered !== undefined, 'answered while the collector was deleting files')
      assert.deepEqual(answered.map((r) => r.status), [200, 200, 200, 200])
      assert.equal(answered[1].body.data.status, 'online')
    } finally {
      release()
    }
    const path = a.body.data.avatar.info.path as string
    await until('the files to be collected', async () => ((await srv.storedFiles()).includes(path.slice(1)) ? undefined : true), 5000, 100)
  })

  it('a deletion that fails leaves the files for a later pass of the collector', async () => {
    const a = await srv.call('POST', '/agents', { serviceUserId: 'refused-a', name: 'A', avatar: `${fx.url}/photo.webp` })
    assert.equal(a.status, 200)
    const path = a.body.data.avatar.info.path as string
    const { inCollector, release } = armPause(true)
    assert.equal((await srv.call('DELETE', `/agents/${a.body.data.id}`)).status, 200)
    await inCollector
    release()
    // The failed pass put the content back on the schedule (grace 0 here): the next pass takes it.
    await until('the files to be collected', async () => ((await srv.storedFiles()).includes(path.slice(1)) ? undefined : true), 5000, 100)
  })

  /**
   * Makes an agent with the image at first and deletes it. Once the collector has claimed the
   * image's content and stopped before deleting its files, another agent is made through `via` with
   * the same bytes (at second): its write finds the files still there and goes on to write its row.
   * The collector is released after 500 ms. The second agent must then be answered, with the first's
   * files, whole, and keep them. Resolves with whether it was answered before the release.
   * `whileHeld` runs once the collector holds the claim, before the second write.
   */
  const writeWhileCollecting = async (via: TestServer, first: string, second: string, ids: [string, string], whileHeld?: () => Promise<void>): Promise<boolean> => {
    const a = await srv.call('POST', '/agents', { serviceUserId: ids[0], name: 'First', avatar: `${fx.url}${first}` })
    assert.equal(a.status, 200)
    const whole = await filesOf(a.body.data)

    const { inCollector, release } = armPause()
    assert.equal((await srv.call('DELETE', `/agents/${a.body.data.id}`)).status, 200)
    await inCollector
    await whileHeld?.()
    let answered = false
    const pending = via.call('POST', '/agents', { serviceUserId: ids[1], name: 'Second', avatar: `${fx.url}${second}` })
      .finally(() => { answered = true })
    await new Promise((resolve) => setTimeout(resolve, 500))
    const answeredBeforeRelease = answered
    release()
    const b = await pending
    assert.equal(b.status, 200, JSON.stringify(b.body))
    assert.equal(b.body.data.avatar.info.path, a.body.data.avatar.info.path)
    // Later passes of the collector must not take them either.
    await new Promise((resolve) => setTimeout(resolve, 400))
    assert.deepEqual(await filesOf(b.body.data), whole, 'the files are there, whole')
    return answeredBeforeRelease
  }

  it('a write that refers to content being collected has its files when it is answered', async () => {
    const early = await writeWhileCollecting(srv, '/photo.jpg', '/photo-copy.jpg', ['race-a', 'race-b'])
    assert.equal(early, false, 'not answered while the files may still be being deleted')
  })

  it('a write on another server waits for this server\'s collector, then puts the files back', async () => {
    // A second server on the same database and store, whose own collector does not run meanwhile.
    const other = await startTestServer({ ...srv.sharedEnv, MAINTENANCE_INTERVAL_MS: '3600000' })
    try {
      // An image no agent of this suite refers to (photo.jpg is race-b's now); the same bytes again.
      const early = await writeWhileCollecting(other, '/rotated.jpg', '/rotated.jpg?again', ['race-c', 'race-d'])
      assert.equal(early, false, 'not answered while the files may still be being deleted')
    } finally {
      await other.close()
    }
  })

  // The claim's deadline (60 s) is set by the collector's instance; the clocks of several instances
  // need not agree that closely.
  const twoMinutesAhead = (): number => Math.floor(Date.now() / 1000) + 120

  it('a write on a server whose clock runs ahead still waits for the collector', async () => {
    const ahead = await startTestServer({ ...srv.sharedEnv, MAINTENANCE_INTERVAL_MS: '3600000' }, { clock: twoMinutesAhead })
    try {
      const early = await writeWhileCollecting(ahead, '/tiny.png', '/tiny.png?again', ['race-e', 'race-f'])
      assert.equal(early, false, 'not answered while the files may still be being deleted')
    } finally {
      await ahead.close()
    }
  })

  it('a server whose clock runs ahead does not take a claim in progress for abandoned', async () => {
    const other = await startTestServer({ ...srv.sharedEnv, MAINTENANCE_INTERVAL_MS: '3600000' })
    let ahead: TestServer | undefined
    try {
      const early = await writeWhileCollecting(other, '/anim.gif', '/anim.gif?again', ['race-g', 'race-h'], async () => {
        // Started once this server's collector holds the claim (so its own collector cannot take the
        // content first); its upkeep runs often, and would end the claim (its deadline past by this
        // clock) at once.
        ahead = await startTestServer({ ...srv.sharedEnv, MAINTENANCE_INTERVAL_MS: '100' }, { clock: twoMinutesAhead })
        await new Promise((resolve) => setTimeout(resolve, 300))
      })
      assert.equal(early, false, 'not answered while the files may still be being deleted')
    } finally {
      await Promise.all([ahead?.close(), other.close()])
    }
  })
})

describe('a file collector that stops on the way', () => {
  let srv: TestServer
  let fx: FixtureServer
  // Content is collected 2 s after nothing refers to it: time for the test to step in first.
  serversForSuite((s, f) => { srv = s; fx = f }, { AVATAR_GC_GRACE_SECONDS: '2', MAINTENANCE_INTERVAL_MS: '100' })

  it('leaves a claim that expires; its content is then collected by a later pass', async () => {
    const a = await srv.call('POST', '/agents', { serviceUserId: 'stopped', name: 'Stopped', avatar: `${fx.url}/photo.png` })
    assert.equal(a.status, 200)
    const { ext, path } = a.body.data.avatar.info as { ext: string, path: string }
    const sha256 = path.slice(path.lastIndexOf('/') + 1, -(ext.length + 1))
    assert.equal((await srv.call('DELETE', `/agents/${a.body.data.id}`)).status, 200)
    // What a collector killed between its claim and its deletions leaves in the database: the
    // content off the schedule and its claim, whose deadline has passed, never ended.
    const db = srv.services.database.db
    const now = Math.floor(Date.now() / 1000)
    await db.deleteFrom('blob_gc').where('sha256', '=', sha256).execute()
    await db.insertInto('blob_claims').values({ sha256, ext, claimed_at: now - 120, deleting_until: now - 60 }).execute()
    assert.ok((await srv.storedFiles()).includes(path.slice(1)), 'the files are still there')

    await until('the files to be collected', async () => ((await srv.storedFiles()).includes(path.slice(1)) ? undefined : true), 8000, 100)
    // The claim is ended just after the last file goes.
    await until('the claim to be ended', async () => {
      const claim = await db.selectFrom('blob_claims').select('deleting_until').where('sha256', '=', sha256).executeTakeFirst()
      return claim?.deleting_until === 0 ? true : undefined
    }, 5000, 100)
  })
})
