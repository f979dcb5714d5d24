import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { startFixtureServer, type FixtureServer } from './helpers/fixtures.js'
import { call, startTwoInstances, type Instances, type ServeProcess } from './helpers/process.js'
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
