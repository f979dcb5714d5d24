import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import SQLite from 'better-sqlite3'
import { sql } from 'kysely'
import pg from 'pg'
import { requestFingerprint } from '../src/http/plugins/idempotency.js'
import { startFixtureServer } from './helpers/fixtures.js'
import { rawGet, startTestServer, untilWaitingForLock, type ApiResponse, type TestServer } from './helpers/server.js'

describe('ETags and conditional requests', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer() })
  after(async () => { await srv.close() })

  it('single-agent responses carry a strong ETag; If-None-Match gives 304', async () => {
    const created = await srv.call('POST', '/agents', { serviceUserId: 'etag-1', name: 'E' })
    const etag = created.headers.get('etag')
    assert.match(etag ?? '', /^"[\w-]+"$/, 'strong: no W/ prefix')
    const got = await srv.call('GET', `/agents/${created.body.data.id}`)
    assert.equal(got.headers.get('etag'), etag)
    const byUserId = await srv.call('GET', '/agents/by-service-user-id/etag-1')
    assert.equal(byUserId.headers.get('etag'), etag)

    const conditional = await rawGet(`${srv.api}/agents/${created.body.data.id}`, { authorization: `Bearer ${srv.token}`, 'if-none-match': etag! })
    assert.equal(conditional.status, 304)
    assert.equal(conditional.body.length, 0)
    const stale = await rawGet(`${srv.api}/agents/${created.body.data.id}`, { authorization: `Bearer ${srv.token}`, 'if-none-match': '"nope"' })
    assert.equal(stale.status, 200)

    const changed = await srv.call('PUT', `/agents/${created.body.data.id}`, { name: 'Changed' })
    assert.notEqual(changed.headers.get('etag'), etag)
    const unchanged = await srv.call('PUT', `/agents/${created.body.data.id}`, { name: 'Changed' })
    assert.equal(unchanged.headers.get('etag'), changed.headers.get('etag'), 'no change, same ETag')
  })

  it('If-Match on PUT and DELETE: 412 on a stale version, success on the current one', async () => {
    const created = await srv.call('POST', '/agents', { serviceUserId: 'etag-2', name: 'Before' })
    const id = created.body.data.id as string
    const v1 = created.headers.get('etag')!
    const ok = await srv.call('PUT', `/agents/${id}`, { name: 'After' }, { 'if-match': v1 })
    assert.equal(ok.status, 200)
    const v2 = ok.headers.get('etag')!

    const stale = await srv.call('PUT', `/agents/${id}`, { name: 'Lost update' }, { 'if-match': v1 })
    assert.equal(stale.status, 412)
    assert.equal(stale.body.error.code, 'precondition_failed')
    assert.equal((await srv.call('GET', `/agents/${id}`)).body.data.name, 'After')

    const staleDelete = await srv.call('DELETE', `/agents/${id}`, undefined, { 'if-match': v1 })
    assert.equal(staleDelete.status, 412)
    assert.equal((await srv.call('GET', `/agents/${id}`)).status, 200)
    assert.equal((await srv.call('DELETE', `/agents/${id}`, undefined, { 'if-match': v2 })).status, 200)
  })

  it('If-Match compares strongly: a weak tag never matches; If-None-Match (weak) gives 304 on GET and HEAD', async () => {
    const created = await srv.call('POST', '/agents', { serviceUserId: 'etag-weak', name: 'Weak' })
    const id = created.body.data.id as string
    const etag = created.headers.get('etag')!
    for (const [method, body] of [['PUT', { name: 'Changed' }], ['DELETE', undefined]] as const) {
      const weak = await srv.call(method, `/agents/${id}`, body, { 'if-match': `W/${etag}` })
      assert.equal(weak.status, 412, `${method} with If-Match: W/<etag>`)
      assert.equal(weak.body.error.code, 'precondition_failed')
    }
    assert.equal((await srv.call('GET', `/agents/${id}`)).body.data.name, 'Weak')
    const auth = { authorization: `Bearer ${srv.token}` }
    for (const path of [`/agents/${id}`, '/agents/by-service-user-id/etag-weak']) {
      for (const tag of [etag, `W/${etag}`, `"other", ${etag}`]) {
        for (const method of ['GET', 'HEAD']) {
          const res = await fetch(`${srv.api}${path}`, { method, headers: { ...auth, 'if-none-match': tag } })
          assert.equal(res.status, 304, `${method} ${path} If-None-Match: ${tag}`)
        }
      }
      const head = await fetch(`${srv.api}${path}`, { method: 'HEAD', headers: { ...auth, 'if-none-match': '"other"' } })
      assert.equal(head.status, 200)
      assert.equal(head.headers.get('etag'), etag)
    }
    assert.equal((await srv.call('PUT', `/agents/${id}`, { name: 'Changed' }, { 'if-match': `"other", ${etag}` })).status, 200)
  })

  it('sync PUT with If-Match (even *) never creates: 412, and nothing is created; on an existing agent * is met', async () => {
    const refused = await srv.call('PUT', '/agents/by-service-user-id/etag-star', { name: 'Star' }, { 'if-match': '*' })
    assert.equal(refused.status, 412)
    assert.equal(refused.body.error.code, 'precondition_failed')
    assert.equal((await srv.call('GET', '/agents/by-service-user-id/etag-star')).status, 404)
    assert.equal((await srv.call('PUT', '/agents/by-service-user-id/etag-star', { name: 'Star' })).body.meta.created, true)
    const updated = await srv.call('PUT', '/agents/by-service-user-id/etag-star', { name: 'Starred' }, { 'if-match': '*' })
    assert.equal(updated.status, 200)
    assert.equal(updated.body.data.name, 'Starred')
  })

  it('concurrent PUTs without If-Match lose nothing: each field written by someone sticks', async () => {
    const created = await srv.call('POST', '/agents', { serviceUserId: 'etag-3', name: 'N' })
    const id = created.body.data.id as string
    await Promise.all([
      srv.call('PUT', `/agents/${id}`, { name: 'Renamed' }),
      srv.call('PUT', `/agents/${id}`, { status: 'online' }),
      srv.call('PUT', `/agents/${id}`, { active: false })
    ])
    const { body: { data } } = await srv.call('GET', `/agents/${id}`)
    assert.deepEqual([data.name, data.status, data.active], ['Renamed', 'online', false])
  })
})

describe('If-Match and writes the API does not show', () => {
  it('a PUT whose row another write changed without changing what the API shows (a heartbeat of an agent online) still matches: 200, not 412', async () => {
    const srv = await startTestServer()
    try {
      const { body: { data: agent } } = await srv.call('POST', '/agents', { serviceUserId: 'if-match-hidden', name: 'Before' })
      await srv.call('POST', `/agents/${agent.id as string}/heartbeat`)
      const etag = (await srv.call('GET', `/agents/${agent.id as string}`)).headers.get('etag') ?? ''
      // Another process holds the write lock (SQLite) or the agent's row (PostgreSQL) while the PUT
      // reads the agent and waits to write it, then writes what a heartbeat writes, and lets go.
      const target = srv.services.config.database
      const hidden = 'update agents set version = version + 1, presence_expires_at = presence_expires_at + 1 where id = '
      let put: Promise<Awaited<ReturnType<TestServer['call']>>>
      if (target.kind === 'postgres') {
        const other = new pg.Client({ connectionString: srv.sharedEnv.DATABASE_URL })
        await other.connect()
        try {
          await other.query('begin')
          await other.query('select 1 from agents where id = $1 for update', [agent.id])
          put = srv.call('PUT', `/agents/${agent.id as string}`, { name: 'After' }, { 'if-match': etag })
          await untilWaitingForLock(srv, { statement: 'update' })
          await other.query(`${hidden}$1`, [agent.id])
          await other.query('commit')
        } finally {
          await other.end()
        }
      } else {
        const other = new SQLite(target.file)
        try {
          other.exec('BEGIN IMMEDIATE')
          put = srv.call('PUT', `/agents/${agent.id as string}`, { name: 'After' }, { 'if-match': etag })
          await new Promise((resolve) => setTimeout(resolve, 300))
          other.prepare(`${hidden}?`).run(agent.id)
          other.exec('COMMIT')
        } finally {
          other.close()
        }
      }
      const res = await put
      assert.equal(res.status, 200, JSON.stringify(res.body))
      assert.equal(res.body.data.name, 'After')
    } finally {
      await srv.close()
    }
  })
})

describe('a read meeting an avatar replaced under it (PostgreSQL)', { skip: process.env.TEST_DATABASE_URL === undefined && 'PostgreSQL only: a read held between its two statements by a lock from outside' }, () => {
  /**
   * Agents A and B with avatars of their own; `read` is sent and held between its rows' read and
   * their avatar records' read, while A's avatar is replaced by B's record (as another instance's
   * write would do with a new one), with `alsoSet` written to A's row too. The read's answer.
   */
  async function readAcrossAvatarSwap (
    first: Record<string, unknown>, read: (srv: TestServer, a: { id: string }) => Promise<ApiResponse>, alsoSet = ''
  ): Promise<{ res: ApiResponse, b: { avatar: { info: { path: string } } } }> {
    const fx = await startFixtureServer()
    // No avatar record kept in memory: as on an instance that did not make them.
    const srv = await startTestServer({}, { avatarRowsKept: 0 })
    try {
      const a = (await srv.call('POST', '/agents', { ...first, avatar: `${fx.url}/photo.jpg` })).body.data
      const b = (await srv.call('POST', '/agents', { serviceUserId: `${first.serviceUserId as string}-other`, name: 'Other', avatar: `${fx.url}/photo.png` })).body.data
      const other = new pg.Client({ connectionString: srv.sharedEnv.DATABASE_URL })
      await other.connect()
      let answer: Promise<ApiResponse>
      try {
        await other.query('begin')
        await other.query('lock table avatars in access exclusive mode')
        answer = read(srv, a)
        await untilWaitingForLock(srv, { statement: 'avatars' })
        const { rows: [{ avatar_id: old }] } = await other.query('select avatar_id from agents where id = $1', [a.id])
        await other.query(`update agents set ${alsoSet}avatar_id = (select avatar_id from agents where id = $1), version = version + 1 where id = $2`, [b.id, a.id])
        await other.query('delete from avatars where id = $1', [old])
        await other.query('commit')
      } finally {
        await other.end()
      }
      return { res: await answer, b }
    } finally {
      await srv.close()
      await fx.close()
    }
  }

  it('shows the agent with its new avatar, never with none (a state that never was)', async () => {
    const { res, b } = await readAcrossAvatarSwap({ serviceUserId: 'swap-a', name: 'A' }, async (srv, a) => await srv.call('GET', `/agents/${a.id}`))
    assert.equal(res.status, 200)
    assert.notEqual(res.body.data.avatar, null, 'shown with no avatar')
    assert.equal(res.body.data.avatar.info.path, b.avatar.info.path)
  })

  it('a filtered list never shows an agent read again that no longer meets its filter', async () => {
    // The list reads C's row (online); meanwhile another instance's write takes C offline with a new avatar.
    const { res } = await readAcrossAvatarSwap({ serviceUserId: 'swap-c', name: 'C', status: 'online' },
      async (srv) => await srv.call('GET', '/agents?status=online&limit=10'), "status = 'offline', ")
    assert.equal(res.status, 200)
    const shown = (res.body.data as Array<{ id: string, status: string }>).map((x) => `${x.id}:${x.status}`)
    assert.deepEqual(shown, [], 'an offline agent in a list of online ones')
  })
})

describe('Idempotency-Key on POST', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer() })
  after(async () => { await srv.close() })

  it('a retry with the same key and body returns the first response and creates nothing', async () => {
    const body = { serviceUserId: 'idem-1', name: 'Once' }
    const first = await srv.call('POST', '/agents', body, { 'idempotency-key': 'key-1' })
    assert.equal(first.status, 200)
    assert.equal(first.headers.get('idempotent-replayed'), null)
    const retry = await srv.call('POST', '/agents', body, { 'idempotency-key': 'key-1' })
    assert.equal(retry.status, 200)
    assert.deepEqual(retry.body, first.body)
    assert.equal(retry.headers.get('idempotent-replayed'), 'true')
    assert.equal(retry.headers.get('etag'), first.headers.get('etag'))
    const list = await srv.call('GET', '/agents?serviceUserId=idem-1')
    assert.equal(list.body.data.length, 1)
    // Without the key the duplicate is what it always was: a 409.
    assert.equal((await srv.call('POST', '/agents', body)).status, 409)
  })

  it('the same key with another body is a 422', async () => {
    await srv.call('POST', '/agents', { serviceUserId: 'idem-2', name: 'A' }, { 'idempotency-key': 'key-2' })
    const other = await srv.call('POST', '/agents', { serviceUserId: 'idem-2b', name: 'B' }, { 'idempotency-key': 'key-2' })
    assert.equal(other.status, 422)
    assert.equal(other.body.error.code, 'idempotency_key_reused')
    assert.equal((await srv.call('GET', '/agents?serviceUserId=idem-2b')).body.data.length, 0)
  })

  it('concurrent retries with one key create one agent', async () => {
    const body = { serviceUserId: 'idem-3', name: 'Race' }
    const results = await Promise.all(Array.from({ length: 5 }, () => srv.call('POST', '/agents', body, { 'idempotency-key': 'key-3' })))
    for (const r of results) assert.ok(r.status === 200 || (r.status === 409 && r.body.error.code === 'idempotency_key_in_progress'), JSON.stringify(r.body))
    const ok = results.filter((r) => r.status === 200)
    assert.ok(ok.length >= 1)
    assert.equal(new Set(ok.map((r) => r.body.data.id)).size, 1)
    assert.equal((await srv.call('GET', '/agents?serviceUserId=idem-3')).body.data.length, 1)
  })

  it('a failed request does not burn its key, and keys are per widget', async () => {
    const bad = await srv.call('POST', '/agents', { serviceUserId: 'idem-4', name: 'X', avatar: 'ftp://nope' }, { 'idempotency-key': 'key-4' })
    assert.equal(bad.status, 422)
    const fixed = await srv.call('POST', '/agents', { serviceUserId: 'idem-4', name: 'X', avatar: 'ftp://nope' }, { 'idempotency-key': 'key-4' })
    assert.equal(fixed.status, 422, 'ran again, not replayed')
    const other = await srv.services.tokens.create('another-widget')
    const theirs = await srv.call('POST', '/agents', { serviceUserId: 'idem-1', name: 'Once' }, { 'idempotency-key': 'key-1', authorization: other.token })
    assert.equal(theirs.status, 200)
    assert.equal(theirs.headers.get('idempotent-replayed'), null)
  })

  it('a key whose request stopped on the way (its claim never answered) can be used again once the claim is stale', async () => {
    const mine = await srv.call('POST', '/agents', { serviceUserId: 'idem-widget', name: 'W' })
    const { db } = srv.services.database
    const widgetId = (await db.selectFrom('agents').select('widget_id').where('id', '=', mine.body.data.id as string).executeTakeFirstOrThrow()).widget_id
    const body = { serviceUserId: 'idem-stale', name: 'Stale' }
    const claim = async (key: string, age: number) => await db.insertInto('idempotency_keys')
      .values({ widget_id: widgetId, key, request_hash: requestFingerprint(body, undefined), status_code: null, response: null, created_at: Math.floor(Date.now() / 1000) - age })
      .execute()
    // As a process killed after claiming the key would leave it: a minute ago, then an hour ago.
    await claim('key-running', 60)
    const running = await srv.call('POST', '/agents', body, { 'idempotency-key': 'key-running' })
    assert.equal(running.status, 409)
    assert.equal(running.body.error.code, 'idempotency_key_in_progress')
    assert.equal(running.headers.get('retry-after'), '1', 'worth trying again in a moment, unlike other 409s')
    await claim('key-stale', 3600)
    const taken = await srv.call('POST', '/agents', body, { 'idempotency-key': 'key-stale' })
    assert.equal(taken.status, 200, JSON.stringify(taken.body))
    const replayed = await srv.call('POST', '/agents', body, { 'idempotency-key': 'key-stale' })
    assert.equal(replayed.headers.get('idempotent-replayed'), 'true')
    assert.deepEqual(replayed.body, taken.body)
  })

  it('a create is kept with its answer or not at all: when the answer cannot be kept, nothing is created, and a retry creates it once', async () => {
    const { db } = srv.services.database
    const onPostgres = srv.services.config.database.kind === 'postgres'
    // The database refuses to keep any answer (as a failing disk or a statement timeout at that moment would).
    if (onPostgres) {
      await sql`create function agentry_test_refuse() returns trigger language plpgsql as $$ begin raise exception 'refused by the test'; end $$`.execute(db)
      await sql`create trigger agentry_test_refuse before insert or update on idempotency_keys for each row when (new.status_code is not null) execute function agentry_test_refuse()`.execute(db)
    } else {
      await sql`create trigger agentry_test_refuse before update on idempotency_keys when new.status_code is not null begin select raise(fail, 'refused by the test'); end`.execute(db)
      await sql`create trigger agentry_test_refuse_insert before insert on idempotency_keys when new.status_code is not null begin select raise(fail, 'refused by the test'); end`.execute(db)
    }
    const body = { serviceUserId: 'idem-kept', name: 'Kept' }
    let failed
    try {
      failed = await srv.call('POST', '/agents', body, { 'idempotency-key': 'key-kept' })
    } finally {
      if (onPostgres) {
        await sql`drop trigger agentry_test_refuse on idempotency_keys`.execute(db)
        await sql`drop function agentry_test_refuse()`.execute(db)
      } else {
        await sql`drop trigger agentry_test_refuse`.execute(db)
        await sql`drop trigger agentry_test_refuse_insert`.execute(db)
      }
    }
    assert.equal(failed.status, 500)
    assert.equal((await srv.call('GET', '/agents/by-service-user-id/idem-kept')).status, 404, 'no agent without its kept answer')
    const retried = await srv.call('POST', '/agents', body, { 'idempotency-key': 'key-kept' })
    assert.equal(retried.status, 200, JSON.stringify(retried.body))
    const again = await srv.call('POST', '/agents', body, { 'idempotency-key': 'key-kept' })
    assert.equal(again.headers.get('idempotent-replayed'), 'true')
    assert.equal(again.body.data.id, retried.body.data.id)
  })

  it('an unusable key is a 400', async () => {
    const res = await srv.call('POST', '/agents', { serviceUserId: 'idem-5', name: 'X' }, { 'idempotency-key': 'x'.repeat(300) })
    assert.equal(res.status, 400)
    assert.equal(res.body.error.details[0].field, 'Idempotency-Key')
  })
})

describe('Idempotency-Key kept a short time', () => {
  let srv: TestServer
  // Answers kept a minute, upkeep ten times a second, and creates allowed to run for minutes
  // (a 2-minute avatar timeout: a claim is taken for running for 4 minutes).
  before(async () => { srv = await startTestServer({ IDEMPOTENCY_TTL_SECONDS: '60', MAINTENANCE_INTERVAL_MS: '100', AVATAR_TIMEOUT_MS: '120000' }) })
  after(async () => { await srv.close() })

  it('a request still running keeps its key past the time answers are kept; answers go after it', async () => {
    const mine = await srv.call('POST', '/agents', { serviceUserId: 'ttl-widget', name: 'W' })
    const { db } = srv.services.database
    const widgetId = (await db.selectFrom('agents').select('widget_id').where('id', '=', mine.body.data.id as string).executeTakeFirstOrThrow()).widget_id
    const body = { serviceUserId: 'ttl-running', name: 'Running' }
    const now = Math.floor(Date.now() / 1000)
    // As a create that began 90 s ago and is still downloading its avatar leaves its key.
    await db.insertInto('idempotency_keys')
      .values({ widget_id: widgetId, key: 'key-running', request_hash: requestFingerprint(body, undefined), status_code: null, response: null, created_at: now - 90 })
      .execute()
    // And a key answered 90 s ago.
    const answered = await srv.call('POST', '/agents', { serviceUserId: 'ttl-answered', name: 'Answered' }, { 'idempotency-key': 'key-answered' })
    assert.equal(answered.status, 200)
    await db.updateTable('idempotency_keys').set({ created_at: now - 90 }).where('key', '=', 'key-answered').execute()

    await new Promise((resolve) => setTimeout(resolve, 500))
    const retry = await srv.call('POST', '/agents', body, { 'idempotency-key': 'key-running' })
    assert.equal(retry.status, 409, 'the first request may still create the agent')
    assert.equal(retry.body.error.code, 'idempotency_key_in_progress')
    const forgotten = await srv.call('POST', '/agents', { serviceUserId: 'ttl-answered', name: 'Answered' }, { 'idempotency-key': 'key-answered' })
    assert.equal(forgotten.headers.get('idempotent-replayed'), null, 'an answer older than IDEMPOTENCY_TTL_SECONDS is forgotten')
  })
})

describe('Idempotency-Key purge beside a failing file collector', () => {
  it('keys are still forgotten on time while every pass of the collector fails', async () => {
    const fx = await startFixtureServer()
    // The store refuses every deletion (as a bucket that is down would): each upkeep's collection fails.
    const srv = await startTestServer({ AVATAR_GC_GRACE_SECONDS: '0', MAINTENANCE_INTERVAL_MS: '100', IDEMPOTENCY_TTL_SECONDS: '60' }, {
      beforeCollect: async () => { throw new Error('the store refused the deletion (test)') }
    })
    try {
      const doomed = await srv.call('POST', '/agents', { serviceUserId: 'gc-doomed', name: 'Doomed', avatar: `${fx.url}/photo.png` })
      assert.equal(doomed.status, 200)
      assert.equal((await srv.call('DELETE', `/agents/${doomed.body.data.id}`)).status, 200)
      const body = { serviceUserId: 'gc-answered', name: 'Answered' }
      assert.equal((await srv.call('POST', '/agents', body, { 'idempotency-key': 'key-old' })).status, 200)
      await srv.services.database.db.updateTable('idempotency_keys').set({ created_at: Math.floor(Date.now() / 1000) - 90 }).where('key', '=', 'key-old').execute()
      await new Promise((resolve) => setTimeout(resolve, 500))
      const again = await srv.call('POST', '/agents', body, { 'idempotency-key': 'key-old' })
      assert.equal(again.headers.get('idempotent-replayed'), null, 'an answer older than IDEMPOTENCY_TTL_SECONDS is forgotten')
    } finally {
      await srv.close()
      await fx.close()
    }
  })
})
