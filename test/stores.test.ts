import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { startTestServer, type TestServer } from './helpers/server.js'
import { storeLeg } from './helpers/stores.js'

describe(`the store leg under test is really in use (${storeLeg()})`, () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer() })
  after(async () => { await srv.close() })

  it('runs on the database and file store the leg names', async () => {
    const [db, files] = storeLeg().split('+')
    assert.equal(srv.services.database.dialect, db)
    assert.equal(srv.services.store.kind, files)
    await srv.services.checkReady()
  })

  it('the database enforces serviceUserId uniqueness per widget itself, not only the code', async () => {
    const { db } = srv.services.database
    const widget = await db.selectFrom('widgets').select('id').executeTakeFirstOrThrow()
    const row = { widget_id: widget.id, service_user_id: 'same', name: 'x', name_search: 'x', status: 'offline' as const, active: 1, avatar_id: null, created_at: 1, updated_at: 1 }
    await db.insertInto('agents').values({ ...row, id: '00000000-0000-4000-8000-000000000001' }).execute()
    await assert.rejects(db.insertInto('agents').values({ ...row, id: '00000000-0000-4000-8000-000000000002' }).execute())
  })

  it('the database enforces unique token hashes', async () => {
    const { db } = srv.services.database
    const t = await db.selectFrom('tokens').selectAll().executeTakeFirstOrThrow()
    await assert.rejects(db.insertInto('tokens').values({ ...t, id: 'another-id' }).execute())
  })
})
