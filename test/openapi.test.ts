import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { startTestServer, type TestServer } from './helpers/server.js'

describe('OpenAPI and docs', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer() })
  after(async () => { await srv.close() })

  it('/openapi.json documents the endpoints from the same schemas that validate requests', async () => {
    const res = await fetch(`${srv.url}/openapi.json`)
    assert.equal(res.status, 200)
    const doc = await res.json() as {
      openapi: string
      paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: { required?: string[], properties: Record<string, unknown> } }> }, security?: unknown[], responses: Record<string, unknown> }>>
      components: { securitySchemes: Record<string, unknown> }
    }
    assert.match(doc.openapi, /^3\.1/)
    assert.deepEqual(Object.keys(doc.paths['/api/external/v1/agents'] ?? {}).sort(), ['get', 'post'])
    assert.deepEqual(Object.keys(doc.paths['/api/external/v1/agents/{id}'] ?? {}).sort(), ['delete', 'get', 'put'])
    for (const path of ['/api/external/v1/agents/by-service-user-id/{serviceUserId}', '/api/external/v1/agents/{id}/heartbeat', '/api/external/v1/agents/availability']) {
      assert.ok(doc.paths[path], path)
    }
    const post = doc.paths['/api/external/v1/agents']!.post!
    const json = post.requestBody!.content['application/json']!.schema
    assert.deepEqual(json.required, ['serviceUserId', 'name'])
    assert.deepEqual(Object.keys(json.properties).sort(), ['active', 'avatar', 'name', 'serviceUserId', 'status'])
    assert.ok(post.requestBody!.content['application/x-www-form-urlencoded'])
    assert.ok(post.responses['200'] && post.responses['422'] && post.responses['409'])
    assert.deepEqual(post.security, [{ token: [] }])
    assert.ok(doc.components.securitySchemes.token)
    assert.ok(doc.paths['/healthz'] && doc.paths['/readyz'])
  })

  it('/openapi.json documents the headers the API reads and sends: Idempotency-Key, If-Match, If-None-Match, Last-Event-ID, ETag', async () => {
    type Operation = { parameters?: Array<{ in: string, name: string }>, responses: Record<string, { headers?: Record<string, unknown> }> }
    const doc = await (await fetch(`${srv.url}/openapi.json`)).json() as { paths: Record<string, Record<string, Operation>> }
    const headersOf = (path: string, method: string): string[] =>
      (doc.paths[`/api/external/v1${path}`]?.[method]?.parameters ?? []).filter((p) => p.in === 'header').map((p) => p.name.toLowerCase())
    assert.deepEqual(headersOf('/agents', 'post'), ['idempotency-key'])
    for (const [path, method] of [['/agents/{id}', 'put'], ['/agents/{id}', 'delete'], ['/agents/by-service-user-id/{serviceUserId}', 'put']] as const) {
      assert.deepEqual(headersOf(path, method), ['if-match'], `${method} ${path}`)
    }
    assert.deepEqual(headersOf('/agents/{id}', 'get'), ['if-none-match'])
    assert.deepEqual(headersOf('/events', 'get'), ['last-event-id'])
    assert.deepEqual(Object.keys(doc.paths['/api/external/v1/agents']!.post!.responses['200']!.headers ?? {}).sort(), ['ETag', 'Idempotent-Replayed'])
    assert.ok(doc.paths['/api/external/v1/agents/{id}']!.get!.responses['200']!.headers?.ETag)
  })

  it('/docs is a readable page', async () => {
    const res = await fetch(`${srv.url}/docs`)
    assert.equal(res.status, 200)
    assert.match(res.headers.get('content-type') ?? '', /text\/html/)
    assert.match(await res.text(), /swagger/i)
  })

  it('/healthz and /readyz answer without a token', async () => {
    for (const path of ['/healthz', '/readyz']) {
      const res = await fetch(`${srv.url}${path}`)
      assert.equal(res.status, 200)
      assert.deepEqual(await res.json(), { status: 200, data: { ok: true } })
    }
  })
})
