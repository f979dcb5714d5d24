import assert from 'node:assert/strict'
import fs from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import { describe, it } from 'node:test'
import { startFixtureServer, type FixtureServer } from './helpers/fixtures.js'
import { until } from './helpers/process.js'
import { COLLECT_AT_ONCE, headerPairs, metricValue, rawGet, serversForSuite, startTestServer, type RawResponse, type TestServer } from './helpers/server.js'
import { storeLeg } from './helpers/stores.js'

/**
 * On local disk, small avatar files are answered from memory once read (src/http/static-cache.ts).
 * A client must not be able to tell, except by speed: the same status, headers in the same order,
 * the same bytes; and a file that is deleted or changed on disk is never answered from memory.
 * A query string sends the very same request the usual way (@fastify/static), for comparison.
 */

const onLocalDisk = storeLeg().endsWith('local')

const pairs = headerPairs
const header = (raw: RawResponse, name: string) => pairs(raw).find(([n]) => n === name)?.[1]

const fastAnswers = async (srv: TestServer): Promise<number> => await metricValue(srv, 'agentry_http_fast_answers_total')
/** agentry_http_requests_total for GET /static/* answered 200. */
const staticRequests = async (srv: TestServer): Promise<number> => await metricValue(srv, 'agentry_http_requests_total{method="GET",route="/static/*",status_code="200"}')

describe('GET /static/... from memory', { skip: !onLocalDisk && 'files are kept in memory only when they are on local disk' }, () => {
  let srv: TestServer
  let fx: FixtureServer
  serversForSuite((s, f) => { srv = s; fx = f }, COLLECT_AT_ONCE)

  /** Creates an agent with the image and returns its 120x120 URL, once that file is served from memory. */
  async function cachedFile (serviceUserId: string, image: string): Promise<{ id: string, url: string, key: string }> {
    const res = await srv.call('POST', '/agents', { serviceUserId, name: serviceUserId, avatar: `${fx.url}/${image}` })
    assert.equal(res.status, 200)
    const url = res.body.data.avatar.url['120x120'] as string
    await until('the file to be answered from memory', async () => {
      const before = await fastAnswers(srv)
      assert.equal((await rawGet(url)).status, 200)
      return await fastAnswers(srv) > before ? true : undefined
    }, 5000, 20)
    return { id: res.body.data.id as string, url, key: `120x120${res.body.data.avatar.info.path as string}` }
  }

  it('answers exactly what @fastify/static answers: status, headers in order, bytes', async () => {
    const { url } = await cachedFile('static-1', 'photo.png')
    const before = await fastAnswers(srv)
    const counted = await staticRequests(srv)
    const fast = await rawGet(url)
    const usual = await rawGet(`${url}?usual=1`)
    assert.equal(await fastAnswers(srv), before + 1, 'one from memory, one the usual way')
    assert.equal(await staticRequests(srv), counted + 2, 'both counted in the request metrics under the route')
    assert.equal(fast.status, 200)
    assert.equal(usual.status, 200)
    assert.deepEqual(fast.body, usual.body)
    const f = pairs(fast).filter(([n]) => n !== 'x-request-id' && n !== 'date')
    const u = pairs(usual).filter(([n]) => n !== 'x-request-id' && n !== 'date')
    assert.deepEqual(f, u)
    assert.deepEqual(pairs(fast).map(([n]) => n), ['x-request-id', 'accept-ranges', 'cache-control', 'last-modified', 'etag', 'content-type',
      'content-length', 'x-content-type-options', 'content-security-policy', 'date', 'connection', 'keep-alive'])
    assert.equal(header(fast, 'content-type'), 'image/png')
    assert.match(header(fast, 'cache-control') ?? '', /immutable/)
  })

  it('leaves conditional, range and HEAD requests to the usual way, which answers them', async () => {
    const { url } = await cachedFile('static-2', 'photo.webp')
    const full = await rawGet(url)
    const etag = header(full, 'etag') ?? ''
    assert.equal((await rawGet(url, { 'if-none-match': etag })).status, 304)
    const range = await rawGet(url, { range: 'bytes=0-9' })
    assert.equal(range.status, 206)
    assert.deepEqual(range.body, full.body.subarray(0, 10))
    const head = await new Promise<number>((resolve, reject) => {
      http.request(url, { method: 'HEAD' }, (res) => { res.resume(); resolve(res.statusCode ?? 0) }).on('error', reject).end()
    })
    assert.equal(head, 200)
    // Past the end: 416 with the file's size, as HTTP has it; a failed If-Match: 412. Both in the envelope.
    const past = await rawGet(url, { range: `bytes=${full.body.length + 10}-` })
    assert.equal(past.status, 416)
    assert.equal(header(past, 'content-range'), `bytes */${full.body.length}`)
    assert.equal(JSON.parse(past.body.toString()).error.code, 'range_not_satisfiable')
    const unmatched = await rawGet(url, { 'if-match': '"not-this-file"' })
    assert.equal(unmatched.status, 412)
    assert.equal(JSON.parse(unmatched.body.toString()).error.code, 'precondition_failed')
  })

  it('never answers from memory for a file that is gone or changed on disk', async () => {
    const { id, url, key } = await cachedFile('static-3', 'rotated.jpg')
    // The local store's layout: DATA_DIR/avatars/<first two hex digits>/<sha256>-120x120.<ext>.
    const [, sha256, ext] = /([0-9a-f]{64})\.(\w+)$/.exec(key) as unknown as [string, string, string]
    const stored = path.join(srv.dataDir, 'avatars', sha256.slice(0, 2), `${sha256}-120x120.${ext}`)
    assert.ok(fs.existsSync(stored), `the file is on disk at ${stored}`)

    // Changed (its modification time stands in for any change): the usual way answers, with the file's new dates.
    const first = await rawGet(url)
    const later = new Date(Date.now() + 60_000)
    fs.utimesSync(stored, later, later)
    const changed = await rawGet(url)
    assert.equal(changed.status, 200)
    assert.notEqual(header(changed, 'last-modified'), header(first, 'last-modified'))
    assert.equal(header(changed, 'last-modified'), later.toUTCString())

    // Gone: the agent deleted, its files collected; a 404 from then on, never the bytes kept in memory.
    assert.equal((await srv.call('DELETE', `/agents/${id}`)).status, 200)
    await until('the file to be collected', () => (fs.existsSync(stored) ? undefined : true), 5000, 50)
    assert.equal((await rawGet(url)).status, 404)
  })
})

describe('GET /static/... within STATIC_CACHE_BYTES', { skip: !onLocalDisk && 'files are kept in memory only when they are on local disk' }, () => {
  it('keeps no more than the bytes allowed: a new file pushes the oldest out', async () => {
    const fx = await startFixtureServer()
    const images = ['photo.png', 'photo.webp']
    // The sizes of the two 120x120 files, from a first server with the default bound.
    const sizes: number[] = []
    const probe = await startTestServer()
    try {
      for (const [i, image] of images.entries()) {
        const res = await probe.call('POST', '/agents', { serviceUserId: `size-${i}`, name: 'Size', avatar: `${fx.url}/${image}` })
        sizes.push(Number(header(await rawGet(res.body.data.avatar.url['120x120'] as string), 'content-length')))
      }
    } finally {
      await probe.close()
    }
    // Room for either file with its ~0.5 KB of bookkeeping, not for both.
    const bound = Math.max(...sizes) + 512 + Math.floor(Math.min(...sizes) / 2)
    const srv = await startTestServer({ STATIC_CACHE_BYTES: String(bound) })
    try {
      const urls: string[] = []
      for (const [i, image] of images.entries()) {
        const res = await srv.call('POST', '/agents', { serviceUserId: `bound-${i}`, name: 'Bound', avatar: `${fx.url}/${image}` })
        urls.push(res.body.data.avatar.url['120x120'] as string)
      }
      const fromMemory = async (url: string): Promise<boolean> => {
        const before = await fastAnswers(srv)
        assert.equal((await rawGet(url)).status, 200)
        return await fastAnswers(srv) > before
      }
      const [first, second] = urls as [string, string]
      await until('the first file to be kept', async () => (await fromMemory(first) ? true : undefined), 5000, 20)
      await until('the second file to be kept', async () => (await fromMemory(second) ? true : undefined), 5000, 20)
      assert.equal(await fromMemory(first), false, 'the first was pushed out to make room')
    } finally {
      await srv.close()
      await fx.close()
    }
  })
})

describe('GET /static/... with STATIC_CACHE_BYTES=0', { skip: !onLocalDisk && 'files are kept in memory only when they are on local disk' }, () => {
  it('always goes the usual way', async () => {
    const fx = await startFixtureServer()
    const srv = await startTestServer({ STATIC_CACHE_BYTES: '0' })
    try {
      const res = await srv.call('POST', '/agents', { serviceUserId: 'static-off', name: 'Off', avatar: `${fx.url}/photo.png` })
      const url = res.body.data.avatar.url['120x120'] as string
      for (let i = 0; i < 5; i++) {
        assert.equal((await rawGet(url)).status, 200)
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
      assert.equal(await fastAnswers(srv), 0)
    } finally {
      await srv.close()
      await fx.close()
    }
  })
})

describe(`GET and HEAD /static/... answer ranges and conditions on every store (${storeLeg()})`, () => {
  let srv: TestServer
  let fx: FixtureServer
  serversForSuite((s, f) => { srv = s; fx = f })

  it('206, 416, 412 and 304 (any spelling of the tag), Last-Modified and Accept-Ranges, and a HEAD without the body', async () => {
    const res = await srv.call('POST', '/agents', { serviceUserId: 'ranges', name: 'Ranges', avatar: `${fx.url}/photo.webp` })
    const url = res.body.data.avatar.url.default as string
    const full = await rawGet(url)
    assert.equal(full.status, 200)
    const size = full.body.length
    const etag = header(full, 'etag') ?? ''
    const lastModified = header(full, 'last-modified') ?? ''
    assert.equal(header(full, 'accept-ranges'), 'bytes')
    assert.ok(!Number.isNaN(Date.parse(lastModified)), `Last-Modified: ${lastModified}`)
    assert.match(header(full, 'cache-control') ?? '', /immutable/)

    const range = await rawGet(url, { range: 'bytes=0-9' })
    assert.equal(range.status, 206)
    assert.equal(header(range, 'content-range'), `bytes 0-9/${size}`)
    assert.deepEqual(range.body, full.body.subarray(0, 10))
    const past = await rawGet(url, { range: `bytes=${size + 10}-` })
    assert.equal(past.status, 416)
    assert.equal(JSON.parse(past.body.toString()).error.code, 'range_not_satisfiable')

    const unmatched = await rawGet(url, { 'if-match': '"not-this-file"' })
    assert.equal(unmatched.status, 412)
    assert.equal(JSON.parse(unmatched.body.toString()).error.code, 'precondition_failed')
    assert.equal((await rawGet(url, { 'if-match': `"abc", ${etag}` })).status, 200, 'a list naming the file meets If-Match')

    const strong = etag.replace(/^W\//, '')
    for (const tags of [etag, strong, `W/${strong}`, `"abc", ${etag}`, '*']) {
      const res = await rawGet(url, { 'if-none-match': tags })
      assert.equal(res.status, 304, `If-None-Match: ${tags}`)
      assert.equal(res.body.length, 0)
    }
    assert.equal((await rawGet(url, { 'if-none-match': '"abc"' })).status, 200)
    assert.equal((await rawGet(url, { 'if-modified-since': lastModified })).status, 304)

    const head = await new Promise<{ status: number, length: string | undefined, bytes: number }>((resolve, reject) => {
      http.request(url, { method: 'HEAD' }, (r) => {
        let bytes = 0
        r.on('data', (c: Buffer) => { bytes += c.length })
        r.on('end', () => { resolve({ status: r.statusCode ?? 0, length: r.headers['content-length'], bytes }) })
      }).on('error', reject).end()
    })
    assert.deepEqual(head, { status: 200, length: String(size), bytes: 0 })
  })
})
