import assert from 'node:assert/strict'
import { createHash, randomUUID } from 'node:crypto'
import { after, before, describe, it } from 'node:test'
import { renameAgentByHand, startTestServer, type TestServer } from './helpers/server.js'

/**
 * On PostgreSQL, GET /agents/:id requests that arrive together are read in one query and each takes
 * its own row (src/agents/batched-reads.ts), and an agent's JSON and ETag are made again only when
 * its row reads differently from the last time. Many concurrent GETs, of two widgets, of agents that do
 * not exist, of the same agent twice, and right after a write, must each answer exactly as one
 * request alone would. On SQLite (no batching) the same must hold, so both legs run it.
 */

interface Agent { id: string, name: string, status: string }

describe('GET /agents/:id, many at once', () => {
  let srv: TestServer
  let otherToken: string
  let mine: Agent[]
  let theirs: Agent[]

  before(async () => {
    srv = await startTestServer()
    otherToken = (await srv.services.tokens.create('batched-other')).token
    mine = []
    theirs = []
    for (let i = 0; i < 40; i++) {
      const res = await srv.call('POST', '/agents', { serviceUserId: `mine-${i}`, name: `Mine ${i}` })
      assert.equal(res.status, 200)
      mine.push(res.body.data)
    }
    for (let i = 0; i < 10; i++) {
      const res = await srv.call('POST', '/agents', { serviceUserId: `theirs-${i}`, name: `Theirs ${i}` }, { authorization: `Bearer ${otherToken}` })
      assert.equal(res.status, 200)
      theirs.push(res.body.data)
    }
  })
  after(async () => { await srv.close() })

  it('each answer is the asker\'s own: other widgets\' agents and unknown ids are 404, repeats are the same agent', async () => {
    const asks: Array<{ id: string, token?: string, expect: Agent | undefined }> = [
      ...mine.map((a) => ({ id: a.id, expect: a })),
      // The same agents again, upper-cased as a client may send them.
      ...mine.slice(0, 20).map((a) => ({ id: a.id.toUpperCase(), expect: a })),
      ...theirs.map((a) => ({ id: a.id, expect: undefined })),
      ...theirs.map((a) => ({ id: a.id, token: otherToken, expect: a })),
      ...mine.slice(0, 10).map((a) => ({ id: a.id, token: otherToken, expect: undefined })),
      ...Array.from({ length: 10 }, () => ({ id: randomUUID(), expect: undefined }))
    ]
    // 150 at once: more than one query's worth (100 ids), in a shuffled order.
    asks.sort(() => Math.random() - 0.5)
    const answers = await Promise.all(asks.map(async (ask) =>
      await srv.call('GET', `/agents/${ask.id}`, undefined, ask.token === undefined ? {} : { authorization: `Bearer ${ask.token}` })))
    answers.forEach((res, i) => {
      const ask = asks[i]!
      if (ask.expect === undefined) {
        assert.equal(res.status, 404, `${ask.id}: ${JSON.stringify(res.body)}`)
        assert.equal(res.body.error.code, 'not_found')
      } else {
        assert.equal(res.status, 200, `${ask.id}: ${JSON.stringify(res.body)}`)
        assert.deepEqual(res.body.data, ask.expect)
      }
    })
  })

  it('reads sent together right after a write all see it', async () => {
    for (const status of ['online', 'offline', 'online']) {
      const target = mine[3]!
      const put = await srv.call('PUT', `/agents/${target.id}`, { status })
      assert.equal(put.status, 200)
      const reads = await Promise.all(Array.from({ length: 30 }, async (_, i) => await srv.call('GET', `/agents/${(i % 2 === 0 ? target : mine[i]!).id}`)))
      for (const [i, res] of reads.entries()) {
        assert.equal(res.status, 200)
        if (i % 2 === 0) assert.equal(res.body.data.status, status)
      }
    }
  })

  it('a row changed in the database by other means shows on the next read, new ETag and all', async () => {
    const target = mine[5]!
    const first = await srv.call('GET', `/agents/${target.id}`)
    assert.deepEqual(await srv.call('GET', `/agents/${target.id}`).then((r) => r.body), first.body)
    await renameAgentByHand(srv, target.id, 'Renamed by SQL')
    const second = await srv.call('GET', `/agents/${target.id}`)
    assert.equal(second.body.data.name, 'Renamed by SQL')
    assert.notEqual(second.headers.get('etag'), first.headers.get('etag'))
    await renameAgentByHand(srv, target.id, target.name)
    assert.deepEqual((await srv.call('GET', `/agents/${target.id}`)).body, first.body)
  })

  it('a GET after a list answers the same JSON as the list, with the ETag of that JSON; a list after a change by other means shows it', async () => {
    const target = mine[7]!
    const listed = await srv.call('GET', '/agents?limit=100')
    const inList = listed.body.data.find((a: Agent) => a.id === target.id)
    const one = await srv.call('GET', `/agents/${target.id}`)
    assert.deepEqual(one.body.data, inList)
    const etag = `"${createHash('sha256').update(JSON.stringify(one.body.data)).digest('base64url').slice(0, 32)}"`
    assert.equal(one.headers.get('etag'), etag, 'the ETag is over the JSON answered')
    await renameAgentByHand(srv, target.id, 'Listed, renamed by SQL')
    const relisted = await srv.call('GET', '/agents?limit=100')
    assert.equal(relisted.body.data.find((a: Agent) => a.id === target.id).name, 'Listed, renamed by SQL')
    await renameAgentByHand(srv, target.id, target.name)
  })
})
