import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { call, dataDir, killAll, removeDirs, startServe, until, type ServeProcess } from './helpers/process.js'
import { provisionStores, storeLeg, type ProvisionedStores } from './helpers/stores.js'

/**
 * Writes that arrive together share a commit on SQLite (group commit). What a client sees must be
 * what it would see one write at a time: each write answered on its own, a failing write undoing
 * only itself, and nothing acknowledged that is not committed: a server killed with SIGKILL right
 * after answering still has every write it acknowledged when it comes back.
 */

const TOKEN = 'durability-test-token-0123456789'
const AGENTS = '/api/external/v1/agents'
const headers = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }

describe(`writes arriving together (${storeLeg()})`, () => {
  let stores: ProvisionedStores
  let env: Record<string, string>
  let server: ServeProcess

  before(async () => {
    stores = await provisionStores()
    env = { ...stores.env, DATA_DIR: dataDir(), BOOTSTRAP_TOKEN: TOKEN }
    server = await startServe(env, 20_000)
  })

  after(async () => {
    await server?.stop()
    killAll()
    await stores?.drop()
    removeDirs()
  })

  const post = async (body: unknown) => await call(`${server.url}${AGENTS}`, { method: 'POST', headers, body: JSON.stringify(body) })

  it('each is answered on its own; a duplicate among them fails alone, the others are all there', async () => {
    const distinct = Array.from({ length: 20 }, (_, i) => ({ serviceUserId: `together-${i}`, name: `Together ${i}` }))
    const duplicates = Array.from({ length: 10 }, (_, i) => ({ serviceUserId: 'together-dup', name: `Duplicate ${i}` }))
    const replies = await Promise.all([...distinct, ...duplicates].map(post))

    for (const reply of replies.slice(0, 20)) assert.equal(reply.status, 200, reply.text)
    const dupStatuses = replies.slice(20).map((r) => r.status).sort()
    assert.deepEqual(dupStatuses, [200, 409, 409, 409, 409, 409, 409, 409, 409, 409])
    for (const reply of replies.slice(20).filter((r) => r.status === 409)) {
      assert.equal((reply.body as { error: { code: string } }).error.code, 'service_user_id_taken')
    }

    const list = await call(`${server.url}${AGENTS}`, { headers })
    const ids = new Set((list.body as { data: Array<{ serviceUserId: string }> }).data.map((a) => a.serviceUserId))
    for (const body of distinct) assert.ok(ids.has(body.serviceUserId), body.serviceUserId)
    assert.ok(ids.has('together-dup'))
    assert.equal(ids.size, 21)
  })

  it('every acknowledged write is there after the server is killed (SIGKILL) and started again', async () => {
    const created = await post({ serviceUserId: 'survivor', name: 'Survivor' })
    assert.equal(created.status, 200)
    const id = (created.body as { data: { id: string } }).data.id

    // Waves of concurrent writes; the server is killed the moment the last wave is answered.
    const acknowledged = new Map<string, string>()
    let lastName = ''
    for (let wave = 0; wave < 10; wave++) {
      const replies = await Promise.all(Array.from({ length: 10 }, async (_, i) => {
        const serviceUserId = `wave-${wave}-${i}`
        return { serviceUserId, reply: await post({ serviceUserId, name: `Wave ${wave} #${i}` }) }
      }))
      for (const { serviceUserId, reply } of replies) {
        assert.equal(reply.status, 200, reply.text)
        acknowledged.set(serviceUserId, (reply.body as { data: { id: string } }).data.id)
      }
      lastName = `Renamed in wave ${wave}`
      const put = await call(`${server.url}${AGENTS}/${id}`, { method: 'PUT', headers, body: JSON.stringify({ name: lastName }) })
      assert.equal(put.status, 200)
    }
    server.child.kill('SIGKILL')
    await server.exited()

    server = await startServe(env, 20_000)
    await until('the restarted server to accept the token', async () =>
      (await call(`${server.url}${AGENTS}`, { headers })).status === 200 ? true : undefined, 10_000)
    const list = await call(`${server.url}${AGENTS}`, { headers })
    const byServiceUserId = new Map((list.body as { data: Array<{ id: string, serviceUserId: string, name: string }> }).data.map((a) => [a.serviceUserId, a]))
    for (const [serviceUserId, agentId] of acknowledged) assert.equal(byServiceUserId.get(serviceUserId)?.id, agentId, `${serviceUserId} was acknowledged`)
    assert.equal(byServiceUserId.get('survivor')?.name, lastName)
  })
})
