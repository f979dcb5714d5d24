import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { describe, it } from 'node:test'
import { serversForSuite, type TestServer } from './helpers/server.js'
import type { FixtureServer } from './helpers/fixtures.js'

/** The four response examples of the seed page, copied verbatim into a fixture. */
const seed = JSON.parse(readFileSync(new URL('./fixtures/seed-examples.json', import.meta.url), 'utf8')) as Record<'list' | 'get' | 'create' | 'update', unknown>

type Shape = string | Shape[] | { [key: string]: Shape }

/** Keys and JSON types, recursively; integers are told apart from other numbers. */
function shapeOf (value: unknown): Shape {
  if (Array.isArray(value)) return value.length === 0 ? [] : [shapeOf(value[0])]
  if (value === null) return 'null'
  if (typeof value === 'number') return Number.isInteger(value) ? 'integer' : 'number'
  if (typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => [k, shapeOf(v)]))
  }
  return typeof value
}

describe('responses have the seed\'s shapes: same keys, same types', () => {
  let srv: TestServer
  let fx: FixtureServer
  serversForSuite((s, f) => { srv = s; fx = f })

  it('create, get, update and list match the seed examples key for key', async () => {
    const created = await srv.call('POST', '/agents', { serviceUserId: '12345', name: 'Vadim Belorusov', status: 'online', avatar: `${fx.url}/photo.jpg`, active: true })
    assert.deepEqual(shapeOf(created.body), shapeOf(seed.create))
    const id = created.body.data.id as string
    await srv.call('POST', '/agents', { serviceUserId: '123456', name: 'Vadim Belorusov', status: 'online', avatar: `${fx.url}/photo.png` })

    assert.deepEqual(shapeOf((await srv.call('GET', `/agents/${id}`)).body), shapeOf(seed.get))
    assert.deepEqual(shapeOf((await srv.call('PUT', `/agents/${id}`, { name: 'Renamed' })).body), shapeOf(seed.update))
    assert.deepEqual(shapeOf((await srv.call('GET', '/agents')).body), shapeOf(seed.list))
  })

  it('the same values where the seed fixes them', async () => {
    const { body } = await srv.call('POST', '/agents', { serviceUserId: 'fixed', name: 'F', avatar: `${fx.url}/photo.jpg` })
    const expected = seed.create as { status: number, data: { avatar: { type: string, info: { ext: string, mimeType: string } } } }
    assert.equal(body.status, expected.status)
    assert.equal(body.data.avatar.type, expected.data.avatar.type)
    assert.equal(body.data.avatar.info.ext, expected.data.avatar.info.ext)
    assert.equal(body.data.avatar.info.mimeType, expected.data.avatar.info.mimeType)
    assert.deepEqual(body.data.avatar.meta, { width: 400, height: 400 })
  })

  it('an agent without an avatar differs only in avatar: null', async () => {
    const { body } = await srv.call('POST', '/agents', { serviceUserId: 'plain', name: 'P' })
    const expected = shapeOf(seed.get) as { data: Record<string, Shape> }
    assert.deepEqual(shapeOf(body), { ...expected, data: { ...expected.data, avatar: 'null' } })
  })
})
