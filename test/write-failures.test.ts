import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { sql } from 'kysely'
import { startTestServer, type ApiResponse, type TestServer } from './helpers/server.js'
import { storeLeg } from './helpers/stores.js'

/**
 * A write is its agent's change and that change's events and webhook deliveries, all or nothing.
 * On PostgreSQL the events' statement is sent with the COMMIT right behind it, unanswered until
 * then (src/db/pipelined.ts); on SQLite writes arriving together share a commit. Either way a
 * write whose events cannot be written must fail whole, alone, and leave the connection it ran on
 * fit for the next.
 *
 * The failure is real, made by the database itself: a trigger, installed by the test, refuses to
 * insert the event of any agent named "Boom…".
 */

function check (res: ApiResponse, status = 200): ApiResponse {
  assert.equal(res.status, status, JSON.stringify(res.body))
  return res
}

describe(`a write whose events cannot be written (${storeLeg()})`, () => {
  let srv: TestServer
  let webhook: string

  before(async () => {
    // Deliveries to nowhere stay pending: the delivery log is what is looked at.
    srv = await startTestServer({ WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true' })
    const { db, dialect } = srv.services.database
    if (dialect === 'postgres') {
      await sql`create function agentry_test_boom() returns trigger language plpgsql as $$
        begin
          if new.payload like '%"name":"Boom%' then raise exception 'boom (a test trigger)'; end if;
          return new;
        end $$`.execute(db)
      await sql`create trigger agentry_test_boom before insert on events for each row execute function agentry_test_boom()`.execute(db)
    } else {
      await sql`create trigger agentry_test_boom before insert on events
        when new.payload like '%"name":"Boom%' begin select raise(abort, 'boom (a test trigger)'); end`.execute(db)
    }
    webhook = check(await srv.call('POST', '/api/external/v1/webhooks', { url: 'http://127.0.0.1:9/nowhere' })).body.data.id
  })

  after(async () => {
    await srv?.close()
  })

  const deliveredNames = async (): Promise<string[]> => {
    const log = check(await srv.call('GET', `/api/external/v1/webhooks/${webhook}/deliveries`)).body.data as Array<{ eventType: string, eventId: string }>
    return log.map((d) => d.eventType)
  }

  it('fails with the error envelope; the agent, its events and deliveries are as before; the next write works', async () => {
    const agent = check(await srv.call('POST', '/agents', { serviceUserId: 'boom-1', name: 'Dana' })).body.data
    assert.deepEqual(await deliveredNames(), ['agent.created'])

    const failed = check(await srv.call('PUT', `/agents/${agent.id}`, { name: 'Boom', status: 'online' }), 500)
    assert.equal(failed.body.status, 500)
    assert.equal(failed.body.error.code, 'internal_error')

    assert.deepEqual(check(await srv.call('GET', `/agents/${agent.id}`)).body.data, agent, 'the agent is as it was')
    assert.deepEqual(await deliveredNames(), ['agent.created'], 'no event, no delivery')

    // Many more, more than the pool has connections: none of them is left unfit.
    for (let i = 0; i < 12; i++) check(await srv.call('PUT', `/agents/${agent.id}`, { name: `Boom ${i}` }), 500)
    const renamed = check(await srv.call('PUT', `/agents/${agent.id}`, { name: 'Dana Scully', status: 'online' })).body.data
    assert.equal(renamed.name, 'Dana Scully')
    assert.equal(renamed.status, 'online')
    assert.deepEqual(check(await srv.call('GET', `/agents/${agent.id}`)).body.data, renamed)
    assert.deepEqual((await deliveredNames()).sort(), ['agent.created', 'agent.status_changed', 'agent.updated'])
  })

  it('a new agent whose event cannot be written is not created', async () => {
    check(await srv.call('POST', '/agents', { serviceUserId: 'boom-new', name: 'Boom' }), 500)
    check(await srv.call('GET', '/agents/by-service-user-id/boom-new'), 404)
    // The serviceUserId is free: nothing of the failed write holds it.
    check(await srv.call('POST', '/agents', { serviceUserId: 'boom-new', name: 'Not boom' }))
  })

  it('among writes arriving together, only the one that fails fails', async () => {
    const agents = await Promise.all(Array.from({ length: 10 }, async (_, i) =>
      check(await srv.call('POST', '/agents', { serviceUserId: `boom-together-${i}`, name: `Together ${i}` })).body.data))
    const replies = await Promise.all(agents.map(async (a, i) => await srv.call('PUT', `/agents/${a.id}`, { name: i === 3 ? 'Boom together' : `Renamed ${i}` })))
    assert.deepEqual(replies.map((r) => r.status), agents.map((_, i) => i === 3 ? 500 : 200))
    for (const [i, a] of agents.entries()) {
      assert.equal(check(await srv.call('GET', `/agents/${a.id}`)).body.data.name, i === 3 ? 'Together 3' : `Renamed ${i}`)
    }
  })
})
