import assert from 'node:assert/strict'
import net from 'node:net'
import { after, before, describe, it } from 'node:test'
import { startTestServer, type TestServer } from './helpers/server.js'

describe('bad input: a 4xx envelope a person can act on, and nothing left behind', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer({ BODY_LIMIT_BYTES: '4096' }) })
  after(async () => { await srv.close() })

  const raw = (body: string, contentType: string, method = 'POST', path = '/agents') =>
    srv.call(method, path, body, { 'content-type': contentType })

  async function assertNothingChanged<T> (fn: () => Promise<T>): Promise<T> {
    const agents = (await srv.call('GET', '/agents')).body.data.length
    const files = await srv.storedFiles()
    const result = await fn()
    assert.equal((await srv.call('GET', '/agents')).body.data.length, agents)
    assert.deepEqual(await srv.storedFiles(), files)
    return result
  }

  function assertEnvelope (res: { status: number, body: { status: number, error: { code: string, message: string } }, headers: Headers }, status: number, code: string) {
    assert.equal(res.status, status, JSON.stringify(res.body))
    assert.equal(res.body.status, status)
    assert.equal(res.body.error.code, code)
    assert.equal(typeof res.body.error.message, 'string')
    assert.ok(res.body.error.message.length > 10)
    assert.match(res.headers.get('content-type') ?? '', /^application\/json/)
    assert.ok(!/at .*\.(ts|js):\d+/.test(JSON.stringify(res.body)), 'no stack trace')
  }

  it('malformed JSON → 400 invalid_json', async () => {
    for (const body of ['{"serviceUserId": "a", ', '{name: x}', 'nul']) {
      assertEnvelope(await assertNothingChanged(() => raw(body, 'application/json')), 400, 'invalid_json')
    }
  })

  it('an empty JSON body → 400', async () => {
    assertEnvelope(await raw('', 'application/json'), 400, 'invalid_json')
  })

  it('a JSON body that is not an object → 400 validation_failed', async () => {
    for (const body of ['[]', '"text"', '42', 'null']) {
      const res = await raw(body, 'application/json')
      assert.equal(res.status, 400, body)
      assert.equal(res.body.error.code, 'validation_failed')
    }
  })

  it('missing required fields → 400 naming each field', async () => {
    const res = await srv.call('POST', '/agents', {})
    assertEnvelope(res, 400, 'validation_failed')
    assert.deepEqual(res.body.error.details, [
      { field: 'serviceUserId', message: 'is required' },
      { field: 'name', message: 'is required' }
    ])
    assert.match(res.body.error.message, /serviceUserId is required/)
  })

  it('wrong types → 400 with a detail per field (JSON is not coerced)', async () => {
    const res = await assertNothingChanged(() => srv.call('POST', '/agents', { serviceUserId: 12345, name: ['x'], active: 'true', status: true, avatar: 5 }))
    assertEnvelope(res, 400, 'validation_failed')
    const byField = Object.fromEntries((res.body.error.details as Array<{ field: string, message: string }>).map((d) => [d.field, d.message]))
    assert.equal(byField.serviceUserId, 'must be a string')
    assert.equal(byField.name, 'must be a string')
    assert.equal(byField.active, 'must be a boolean')
    assert.match(byField.status ?? '', /must be a string|must be one of/)
    assert.equal(byField.avatar, 'must be a string or null')
  })

  it('unknown status values → 400 listing the allowed ones', async () => {
    for (const status of ['away', 'ONLINE', '']) {
      const res = await srv.call('POST', '/agents', { serviceUserId: 's', name: 'S', status })
      assertEnvelope(res, 400, 'validation_failed')
      assert.deepEqual(res.body.error.details, [{ field: 'status', message: 'must be one of: online, offline' }])
    }
    const { body: { data: a } } = await srv.call('POST', '/agents', { serviceUserId: 's-ok', name: 'S' })
    const put = await srv.call('PUT', `/agents/${a.id}`, { status: 'busy' })
    assertEnvelope(put, 400, 'validation_failed')
    assert.equal((await srv.call('GET', `/agents/${a.id}`)).body.data.status, 'offline')
  })

  it('empty or blank names and ids, and over-long values → 400', async () => {
    for (const body of [
      { serviceUserId: '', name: 'x' },
      { serviceUserId: 'x', name: '   ' },
      { serviceUserId: 'x', name: 'n'.repeat(256) },
      { serviceUserId: 'x', name: 'x', avatar: `http://example.com/${'a'.repeat(2048)}` }
    ]) {
      assertEnvelope(await srv.call('POST', '/agents', body), 400, 'validation_failed')
    }
  })

  it('a NUL character in a name, an id or a filter → 400 naming the field, on both stores alike (PostgreSQL text cannot hold one)', async () => {
    for (const [body, field] of [[{ serviceUserId: 'nul\u0000x', name: 'x' }, 'serviceUserId'], [{ serviceUserId: 'x', name: 'a\u0000b' }, 'name']] as const) {
      const res = await assertNothingChanged(() => srv.call('POST', '/agents', body))
      assertEnvelope(res, 400, 'validation_failed')
      assert.deepEqual(res.body.error.details, [{ field, message: 'must contain a non-space character, and no NUL (\\u0000) character' }])
    }
    for (const [path, field] of [['/agents?q=a%00', 'q'], ['/agents?serviceUserId=a%00', 'serviceUserId'], ['/agents/by-service-user-id/a%00', 'serviceUserId']]) {
      const res = await srv.call('GET', path!)
      assertEnvelope(res, 400, 'validation_failed')
      assert.deepEqual(res.body.error.details, [{ field, message: 'must not contain a NUL (\\u0000) character' }])
    }
  })

  it('null for a field that cannot be null → 400', async () => {
    const { body: { data: a } } = await srv.call('POST', '/agents', { serviceUserId: 'nulls', name: 'N' })
    for (const field of ['name', 'serviceUserId', 'status', 'active']) {
      const res = await srv.call('PUT', `/agents/${a.id}`, { [field]: null })
      assertEnvelope(res, 400, 'validation_failed')
      assert.equal(res.body.error.details[0].field, field)
    }
  })

  it('unknown fields → 400 naming the field and the known ones', async () => {
    const res = await srv.call('POST', '/agents', { serviceUserId: 'u', name: 'U', stauts: 'online' })
    assertEnvelope(res, 400, 'validation_failed')
    assert.equal(res.body.error.details[0].field, 'stauts')
    assert.match(res.body.error.details[0].message, /known fields: active, serviceUserId, name, avatar, status/)
  })

  it('an oversized body → 413 payload_too_large', async () => {
    const res = await assertNothingChanged(() => srv.call('POST', '/agents', { serviceUserId: 'big', name: 'x'.repeat(10_000) }))
    assertEnvelope(res, 413, 'payload_too_large')
    const form = await raw(`serviceUserId=big&name=${'x'.repeat(10_000)}`, 'application/x-www-form-urlencoded')
    assertEnvelope(form, 413, 'payload_too_large')
  })

  it('an unsupported content type → 415', async () => {
    for (const type of ['text/plain', 'application/xml', 'image/png']) {
      const res = await raw('serviceUserId=a', type)
      assertEnvelope(res, 415, 'unsupported_media_type')
      assert.match(res.body.error.message, new RegExp(`^Content-Type "${type}" is not supported`))
    }
  })

  it('a multipart body that cannot be read → 400 invalid_multipart', async () => {
    assertEnvelope(await assertNothingChanged(() => raw('serviceUserId=a', 'multipart/form-data; boundary=x')), 400, 'invalid_multipart')
  })

  it('unknown routes and methods → 404 JSON envelope, never an HTML page', async () => {
    for (const [method, path] of [['GET', '/nope'], ['DELETE', '/api/external/v1/agents'], ['GET', '/api/external/v2/agents'], ['PATCH', '/api/external/v1/agents/x']]) {
      const res = await srv.call(method!, path!)
      assertEnvelope(res, 404, 'route_not_found')
    }
  })

  it('a path that is not valid percent-encoding, or with a segment longer than any id → 400 envelope with the request id', async () => {
    for (const path of ['/agents/%zz', '/agents/by-service-user-id/50%off', `/agents/${'a'.repeat(800)}`, `/agents/by-service-user-id/${'a'.repeat(800)}`]) {
      const res = await srv.call('GET', path, undefined, { 'x-request-id': 'bad-path-1' })
      assertEnvelope(res, 400, 'validation_failed')
      assert.equal(res.headers.get('x-request-id'), 'bad-path-1', path)
    }
  })

  it('request ids: generated when absent, echoed when given', async () => {
    const a = await srv.call('GET', '/agents')
    assert.match(a.headers.get('x-request-id') ?? '', /^[0-9a-f-]{36}$/)
    const b = await srv.call('GET', '/agents', undefined, { 'x-request-id': 'trace-abc.123' })
    assert.equal(b.headers.get('x-request-id'), 'trace-abc.123')
    const c = await srv.call('GET', '/agents', undefined, { 'x-request-id': 'bad id with spaces' })
    assert.notEqual(c.headers.get('x-request-id'), 'bad id with spaces')
  })
})

describe('static files are confined to the avatar store', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer() })
  after(async () => { await srv.close() })

  it('no path outside the storage root, and nothing but avatar files, is ever served', async () => {
    const { rawGet } = await import('./helpers/server.js')
    for (const path of [
      '/static/../agentry.db', '/static/%2e%2e/agentry.db', '/static/..%2fagentry.db', '/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd',
      '/static/....//agentry.db', '/static//etc/passwd', '/static/', '/static', '/static/ab/cd/ef/.x.tmp',
      '/static/ab/cd/ef/abcdef.jpeg', '/static/120x120/../../agentry.db', '/static/%00', '/agentry.db'
    ]) {
      const res = await rawGet(`${srv.url}${path}`)
      assert.ok(res.status === 404 || res.status === 400 || res.status === 403, `${path} → ${res.status}`)
      assert.ok(!res.body.toString('latin1').includes('SQLite format'), path)
      assert.ok(!res.body.toString('latin1').includes('root:'), path)
    }
  })

  it('each file is at one URL: other spellings of it (a trailing slash, encoded characters, other folders) are 404', async () => {
    const { rawGet } = await import('./helpers/server.js')
    const { startFixtureServer } = await import('./helpers/fixtures.js')
    const fx = await startFixtureServer()
    try {
      const created = await srv.call('POST', '/agents', { serviceUserId: 'one-url', name: 'One URL', avatar: `${fx.url}/photo.png` })
      assert.equal(created.status, 200)
      const path = created.body.data.avatar.info.path as string
      assert.equal((await rawGet(`${srv.url}/static${path}`)).status, 200)
      const last = path.lastIndexOf('/')
      for (const other of [
        `${path}/`, `${path.slice(0, last)}%2F${path.slice(last + 1)}`, path.replace('.png', '%2epng'),
        `/00/00/00${path.slice(9)}`, `${path.slice(0, 9).toUpperCase()}${path.slice(9)}`
      ]) {
        const res = await rawGet(`${srv.url}/static${other}`)
        assert.equal(res.status, 404, `/static${other}`)
        assert.equal(JSON.parse(res.body.toString()).error.code, 'route_not_found', `/static${other}: the envelope`)
      }
    } finally {
      await fx.close()
    }
  })
})

describe('what Node refuses before there is a request: in the envelope too', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer() })
  after(async () => { await srv.close() })

  const raw = async (bytes: string): Promise<{ status: number, body: { status: number, error: { code: string } } }> => {
    const { port } = new URL(srv.url)
    const socket = net.connect(Number(port), '127.0.0.1')
    let received = ''
    socket.on('data', (chunk: Buffer) => { received += chunk.toString('latin1') })
    await new Promise((resolve) => socket.on('close', resolve).write(bytes))
    const [head = '', body = ''] = received.split('\r\n\r\n')
    return { status: Number(head.split(' ')[1]), body: JSON.parse(body) }
  }

  it('headers over 16 KiB: 431 headers_too_large; bytes that are not HTTP: 400 malformed_request', async () => {
    const big = await raw(`GET /api/external/v1/agents HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`)
    assert.equal(big.status, 431)
    assert.equal(big.body.status, 431)
    assert.equal(big.body.error.code, 'headers_too_large')
    const garbage = await raw('HELLO THERE\r\n\r\n')
    assert.equal(garbage.status, 400)
    assert.equal(garbage.body.error.code, 'malformed_request')
  })
})
