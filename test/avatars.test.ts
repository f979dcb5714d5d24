import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import { describe, it } from 'node:test'
import sharp from 'sharp'
import { createWithUpload, listFiles, rawGet, serversForSuite, startTestServer, type TestServer } from './helpers/server.js'
import { makeImages, manyFramesGif, type FixtureServer } from './helpers/fixtures.js'
import { until } from './helpers/process.js'
import type { LocalBlobStore } from '../src/storage/local.js'

const PATH = /^\/([0-9a-f]{2})\/([0-9a-f]{2})\/([0-9a-f]{2})\/([0-9a-f]{64})\.(jpeg|png|webp|gif)$/

async function download (url: string) {
  const res = await fetch(url)
  return { res, bytes: Buffer.from(await res.arrayBuffer()) }
}

describe('avatar pipeline', () => {
  let srv: TestServer
  let fx: FixtureServer
  let n = 0
  const create = (avatar: unknown, extra: Record<string, unknown> = {}) =>
    srv.call('POST', '/agents', { serviceUserId: `av-${++n}`, name: `Avatar ${n}`, avatar, ...extra })

  serversForSuite((s, f) => { srv = s; fx = f }, { AVATAR_MAX_PIXELS: '25000000' })

  for (const [file, ext, mime, width, height] of [
    ['photo.jpg', 'jpeg', 'image/jpeg', 400, 400],
    ['photo.png', 'png', 'image/png', 640, 480],
    ['photo.webp', 'webp', 'image/webp', 800, 300],
    ['anim.gif', 'gif', 'image/gif', 64, 48]
  ] as const) {
    it(`stores a ${ext.toUpperCase()} with the seed's avatar object, its files and variants`, async () => {
      const res = await create(`${fx.url}/${file}`)
      assert.equal(res.status, 200, JSON.stringify(res.body))
      const av = res.body.data.avatar
      assert.deepEqual(Object.keys(av).sort(), ['createdAt', 'id', 'info', 'meta', 'type', 'updatedAt', 'url'])
      assert.equal(av.type, 'image')
      assert.deepEqual(av.meta, { width, height })
      assert.equal(av.info.ext, ext)
      assert.equal(av.info.mimeType, mime)
      assert.match(av.info.name, /^[0-9a-f]{13}$/)
      const nameSeconds = parseInt(av.info.name.slice(0, 8), 16)
      assert.ok(Math.abs(nameSeconds - av.createdAt) <= 1, 'info.name starts with the unix seconds of storage')
      const m = PATH.exec(av.info.path)
      assert.ok(m, av.info.path)
      assert.equal(`${m[1]}${m[2]}${m[3]}`, m[4]!.slice(0, 6))
      assert.equal(m[5], ext)
      const base = `http://localhost:${new URL(srv.url).port}/static` // the contract's default STATIC_BASE_URL
      assert.deepEqual(av.url, {
        '120x120': `${base}/120x120${av.info.path}`,
        '520x400': `${base}/520x400${av.info.path}`,
        default: `${base}${av.info.path}`
      })
      assert.equal(av.createdAt, res.body.data.createdAt)
      assert.equal(av.updatedAt, av.createdAt)

      const original = await download(av.url.default)
      assert.equal(original.res.status, 200)
      assert.equal(original.res.headers.get('content-type'), mime)
      assert.equal(original.bytes.length, av.info.size)
      assert.equal(createHash('sha256').update(original.bytes).digest('hex'), m[4], 'the file is named by the sha256 of its bytes')
      const om = await sharp(original.bytes, { animated: true }).metadata()
      assert.equal(om.format, ext === 'jpeg' ? 'jpeg' : ext)
      assert.equal(om.width, width)
      assert.equal(om.pageHeight ?? om.height, height)

      const small = await download(av.url['120x120'])
      assert.equal(small.res.status, 200)
      assert.equal(small.res.headers.get('content-type'), mime)
      const sm = await sharp(small.bytes, { animated: true }).metadata()
      assert.equal(sm.width, 120)
      assert.equal(sm.pageHeight ?? sm.height, 120)
      assert.equal(sm.format, om.format, 'variants keep the original format')

      const large = await download(av.url['520x400'])
      const lm = await sharp(large.bytes, { animated: true }).metadata()
      const scale = Math.min(520 / width, 400 / height, 1)
      assert.equal(lm.width, Math.round(width * scale))
      assert.equal(lm.pageHeight ?? lm.height, Math.round(height * scale))
      assert.equal(lm.format, om.format)
      if (ext === 'gif') assert.equal(sm.pages, 2, 'an animated GIF stays animated')
    })
  }

  it('an animated WebP marked with an EXIF orientation is stored turned, frame by frame, still animated with its timing', async () => {
    const res = await create(`${fx.url}/oriented-anim.webp`)
    assert.equal(res.status, 200, JSON.stringify(res.body))
    const av = res.body.data.avatar
    // 64x48 frames marked "rotate 90": stored upright as 48x64.
    assert.deepEqual(av.meta, { width: 48, height: 64 })
    const original = (await download(av.url.default)).bytes
    const meta = await sharp(original, { animated: true }).metadata()
    assert.deepEqual([meta.format, meta.pages, meta.width, meta.pageHeight, meta.loop, meta.delay], ['webp', 2, 48, 64, 3, [100, 150]])
    assert.equal(meta.orientation, undefined, 'the orientation is applied, and dropped with the rest of the metadata')
    assert.equal(meta.exif, undefined)
    // Each frame's pixel at (x, y): the white mark of the top left corner is now in the top right.
    // (Encoded again at WebP quality 90: each channel within a few steps of the colour.)
    const pixel = async (bytes: Buffer, page: number, x: number, y: number) => {
      const { data, info } = await sharp(bytes, { page }).raw().toBuffer({ resolveWithObject: true })
      const at = (y * info.width + x) * info.channels
      return [...data.subarray(at, at + 3)].map((v) => v < 16 ? 0 : v > 239 ? 255 : v)
    }
    assert.deepEqual(await pixel(original, 0, 47, 0), [255, 255, 255], 'the mark turned with its frame')
    assert.deepEqual(await pixel(original, 0, 0, 0), [255, 0, 0], 'the first frame is still the first (red)')
    assert.deepEqual(await pixel(original, 1, 47, 0), [255, 255, 255])
    assert.deepEqual(await pixel(original, 1, 0, 0), [0, 0, 255], 'the second frame (blue) second')
    for (const size of ['120x120', '520x400'] as const) {
      const variant = await sharp((await download(av.url[size])).bytes, { animated: true }).metadata()
      assert.deepEqual([variant.pages, variant.loop, variant.delay], [2, 3, [100, 150]], `${size} stays animated`)
      assert.deepEqual([variant.width, variant.pageHeight], size === '120x120' ? [120, 120] : [48, 64])
    }
  })

  it('applies EXIF orientation and strips EXIF, GPS and comments from the stored original', async () => {
    const res = await create(`${fx.url}/rotated.jpg`)
    assert.equal(res.status, 200, JSON.stringify(res.body))
    const av = res.body.data.avatar
    assert.deepEqual(av.meta, { width: 200, height: 300 }, 'a 300x200 photo marked "rotate 90" is stored upright as 200x300')
    const { bytes } = await download(av.url.default)
    const meta = await sharp(bytes).metadata()
    assert.equal(meta.width, 200)
    assert.equal(meta.height, 300)
    assert.equal(meta.exif, undefined)
    assert.equal(meta.orientation, undefined)
    assert.ok(!bytes.toString('latin1').includes('secret comment'))
    assert.ok(!bytes.toString('latin1').includes('GPS'))
    const large = await sharp((await download(av.url['520x400'])).bytes).metadata()
    assert.deepEqual([large.width, large.height], [200, 300], 'never enlarged')
  })

  it('decides the type from the bytes, not the Content-Type header', async () => {
    const res = await create(`${fx.url}/no-type`)
    assert.equal(res.status, 200)
    assert.equal(res.body.data.avatar.info.ext, 'jpeg')
  })

  it('follows a redirect to the image', async () => {
    const res = await create(`${fx.url}/redirect`)
    assert.equal(res.status, 200)
    assert.equal(res.body.data.avatar.info.ext, 'jpeg')
  })

  it('is content addressed: the same image from two URLs shares one set of files', async () => {
    const a = await create(`${fx.url}/photo.jpg`)
    const filesBefore = await srv.storedFiles()
    const b = await create(`${fx.url}/photo-copy.jpg`)
    assert.equal(a.body.data.avatar.info.path, b.body.data.avatar.info.path)
    assert.notEqual(a.body.data.avatar.id, b.body.data.avatar.id, 'each agent has its own avatar record')
    assert.deepEqual(await srv.storedFiles(), filesBefore)
  })

  it('downloads from the same image host reuse one connection', async () => {
    const before = fx.connections()
    for (let i = 0; i < 3; i++) assert.equal((await create(`${fx.url}/photo.jpg`)).status, 200)
    assert.ok(fx.connections() - before <= 1, `${fx.connections() - before} new connections for 3 downloads`)
  })

  it('a kept connection the host closes as it is reused: the download is made again on a new one', async () => {
    const resets = fx.resets()
    for (let i = 0; i < 3; i++) {
      const res = await create(`${fx.url}/reset-if-reused.jpg`)
      assert.equal(res.status, 200, JSON.stringify(res.body))
    }
    assert.ok(fx.resets() - resets >= 2, 'the host did cut reused connections')
  })

  it('a damaged file at an avatar\'s place (as a crash while storing can leave) is replaced by the next ingest of that image', async (t) => {
    if (srv.services.store.kind !== 'local') { t.skip('local disk only: a bucket never shows a partial object'); return }
    const store = srv.services.store as LocalBlobStore
    const first = (await create(`${fx.url}/photo.jpg`)).body.data.avatar
    const { bytes: whole } = await download(first.url.default)
    const keys = [first.info.path.slice(1), `120x120${first.info.path}`, `520x400${first.info.path}`]
    const wholeFiles = keys.map((k) => fs.readFileSync(store.fileOf(k)))
    fs.writeFileSync(store.fileOf(keys[0]), whole.subarray(0, 100))
    fs.writeFileSync(store.fileOf(keys[1]), Buffer.alloc(wholeFiles[1]!.length))
    fs.rmSync(store.fileOf(keys[2]))

    const again = (await create(`${fx.url}/photo-copy.jpg`)).body.data.avatar
    assert.equal(again.info.path, first.info.path)
    for (const [i, url] of [again.url.default, again.url['120x120'], again.url['520x400']].entries()) {
      const { res, bytes } = await download(url)
      assert.equal(res.status, 200)
      assert.ok(bytes.equals(wholeFiles[i]!), `${url} is whole again`)
    }
  })

  it('serves files with immutable cache headers and ETags', async () => {
    const res = await create(`${fx.url}/tiny.png`)
    for (const url of Object.values<string>(res.body.data.avatar.url)) {
      const first = await fetch(url)
      assert.equal(first.status, 200)
      assert.match(first.headers.get('cache-control') ?? '', /max-age=31536000/)
      assert.match(first.headers.get('cache-control') ?? '', /immutable/)
      assert.equal(first.headers.get('x-content-type-options'), 'nosniff')
      const etag = first.headers.get('etag')
      assert.ok(etag)
      const again = await rawGet(url, { 'if-none-match': etag })
      assert.equal(again.status, 304)
    }
  })

  it('PUT replaces the avatar, keeps it when the same picture comes again, and removes it with null or ""', async () => {
    const { body: { data: a } } = await create(`${fx.url}/photo.jpg`)
    await new Promise((resolve) => setTimeout(resolve, 1100))
    const same = await srv.call('PUT', `/agents/${a.id}`, { avatar: `${fx.url}/photo-copy.jpg` })
    assert.deepEqual(same.body.data, a, 'the same image is no change: same avatar id, same updatedAt')

    const replaced = await srv.call('PUT', `/agents/${a.id}`, { avatar: `${fx.url}/photo.png` })
    assert.equal(replaced.status, 200)
    assert.equal(replaced.body.data.avatar.info.ext, 'png')
    assert.notEqual(replaced.body.data.avatar.id, a.avatar.id)
    assert.ok(replaced.body.data.updatedAt > a.updatedAt)

    const removed = await srv.call('PUT', `/agents/${a.id}`, { avatar: null })
    assert.equal(removed.body.data.avatar, null)
    const { body: { data: b } } = await create(`${fx.url}/tiny.png`)
    const removedEmpty = await srv.call('PUT', `/agents/${b.id}`, { avatar: '' })
    assert.equal(removedEmpty.status, 200)
    assert.equal(removedEmpty.body.data.avatar, null)
    assert.equal((await srv.call('GET', `/agents/${b.id}`)).body.data.avatar, null)
  })

  describe('bad avatars: 422 with a code that says why, and nothing left behind', () => {
    const cases: Array<[string, () => string, string]> = [
      ['an ftp URL', () => 'ftp://example.com/a.jpg', 'avatar_url_invalid'],
      ['a javascript: URL', () => 'javascript:alert(1)', 'avatar_url_invalid'],
      ['a relative URL', () => '/photo.jpg', 'avatar_url_invalid'],
      ['a 404', () => `${fx.url}/missing.jpg`, 'avatar_http_error'],
      ['a 500', () => `${fx.url}/server-error`, 'avatar_http_error'],
      ['an unreachable host', () => 'http://127.0.0.1:1/a.jpg', 'avatar_unreachable'],
      ['a name that does not resolve', () => 'http://no-such-host.invalid/a.jpg', 'avatar_unreachable'],
      ['a redirect loop', () => `${fx.url}/loop-a`, 'avatar_too_many_redirects'],
      ['a slow download', () => `${fx.url}/slow.jpg`, 'avatar_timeout'],
      ['an endless download', () => `${fx.url}/endless`, 'avatar_too_large'],
      ['a declared size over the limit', () => `${fx.url}/huge-declared`, 'avatar_too_large'],
      ['a text file', () => `${fx.url}/text.txt`, 'avatar_not_an_image'],
      ['text that claims to be a JPEG', () => `${fx.url}/liar.jpg`, 'avatar_not_an_image'],
      ['an empty body', () => `${fx.url}/empty`, 'avatar_not_an_image'],
      ['a truncated JPEG', () => `${fx.url}/truncated.jpg`, 'avatar_corrupt'],
      ['an SVG', () => `${fx.url}/image.svg`, 'avatar_unsupported_format'],
      ['an SVG served as PNG', () => `${fx.url}/svg-as.png`, 'avatar_unsupported_format'],
      ['an SVG as Illustrator writes one (a stylesheet, a DOCTYPE with entities)', () => `${fx.url}/illustrator.svg`, 'avatar_unsupported_format'],
      ['a TIFF', () => `${fx.url}/photo.tiff`, 'avatar_unsupported_format'],
      ['a decompression bomb', () => `${fx.url}/bomb.png`, 'avatar_too_many_pixels'],
      ['1,500 frames of 1x1 pixel (over AVATAR_MAX_FRAMES)', () => `${fx.url}/frames.gif`, 'avatar_too_many_pixels'],
      ['a slow download whose body ends with its connection', () => `${fx.url}/slow-unsized.jpg`, 'avatar_timeout']
    ]
    for (const [what, url, code] of cases) {
      it(`${what} → ${code}`, async () => {
        // Local files include temporary (dot-named) ones; the store's listing covers a bucket too.
        const files = async () => [...listFiles(srv.dataDir).filter((f) => !f.endsWith('-wal') && !f.endsWith('-shm')), ...await srv.storedFiles()]
        const filesBefore = await files()
        const countBefore = (await srv.call('GET', '/agents')).body.data.length
        const res = await create(url())
        assert.equal(res.status, 422, JSON.stringify(res.body))
        assert.equal(res.body.status, 422)
        assert.equal(res.body.error.code, code)
        assert.ok(res.body.error.message.length > 20)
        assert.deepEqual(res.body.error.details, [{ field: 'avatar', message: res.body.error.message }])
        assert.equal((await srv.call('GET', '/agents')).body.data.length, countBefore, 'no agent row')
        assert.deepEqual(await files(), filesBefore, 'no file, not even a temporary one')
      })
    }

    it('an error page or a redirect whose body never ends: answered, and its connection cut soon after', async () => {
      const failed = await create(`${fx.url}/endless-404`)
      assert.equal(failed.status, 422, JSON.stringify(failed.body))
      assert.equal(failed.body.error.code, 'avatar_http_error')
      // Redirected to /photo.jpg: the image is had; the redirect's own body is not read to its end.
      const redirected = await create(`${fx.url}/endless-redirect`)
      assert.equal(redirected.status, 200, JSON.stringify(redirected.body))
      assert.equal(redirected.body.data.avatar.info.ext, 'jpeg')
      for (const path of ['/endless-404', '/endless-redirect']) {
        await until(`the service to hang up on ${path}`, () => fx.unfinished(path) === 0 ? true : undefined, 3000)
      }
    })

    it('a bad avatar on PUT leaves the agent exactly as it was', async () => {
      const { body: { data: a } } = await create(`${fx.url}/tiny.png`)
      const res = await srv.call('PUT', `/agents/${a.id}`, { name: 'Changed', avatar: `${fx.url}/image.svg` })
      assert.equal(res.status, 422)
      assert.deepEqual((await srv.call('GET', `/agents/${a.id}`)).body.data, a)
    })
  })

  it('a serviceUserId already taken: 409 whatever the avatar, not even downloaded, nothing stored, no avatar failure counted', async () => {
    // A server of its own, so that no avatar is stored yet.
    const fresh = await startTestServer()
    try {
      assert.equal((await fresh.call('POST', '/agents', { serviceUserId: 'taken', name: 'First' })).status, 200)
      // Besides the database and the rate-limit counts (agentry.db*, agentry.rate-limits.db*).
      const files = async () => [...listFiles(fresh.dataDir).filter((f) => !/^agentry\.(rate-limits\.)?db/.test(f)), ...await fresh.storedFiles()]
      const failures = async () => (await (await fetch(`${fresh.url}/metrics`)).text()).split('\n').filter((l) => l.startsWith('agentry_avatar_failures_total')).join('\n')
      const failuresBefore = await failures()
      const hits = () => ['/photo.jpg', '/missing.jpg', '/slow.jpg'].map((p) => fx.hits.get(p) ?? 0)
      const hitsBefore = hits()
      // An image, a download that would fail, and one that would take longer than the avatar timeout.
      for (const url of [`${fx.url}/photo.jpg`, `${fx.url}/missing.jpg`, `${fx.url}/slow.jpg`]) {
        const res = await fresh.call('POST', '/agents', { serviceUserId: 'taken', name: 'Again', avatar: url })
        assert.equal(res.status, 409, `${url}: ${JSON.stringify(res.body)}`)
        assert.equal(res.body.error.code, 'service_user_id_taken')
      }
      assert.deepEqual(hits(), hitsBefore, 'nothing downloaded')
      assert.deepEqual(await files(), [], 'no file, not even a temporary one')
      assert.equal(await failures(), failuresBefore)
      assert.equal((await fresh.call('GET', '/agents')).body.data.length, 1)
    } finally {
      await fresh.close()
    }
  })
})

describe('AVATAR_MAX_PIXELS counts every frame\'s 120x120 variant too', () => {
  it('ten frames of 1x1 pixel are 144,010 pixels to make: over a limit of 100,000; two 64x48 frames are not', async () => {
    const srv = await startTestServer({ AVATAR_MAX_PIXELS: '100000' })
    try {
      const tiny = await createWithUpload(srv, 'frames-10', 'Frames', manyFramesGif(10))
      assert.equal(tiny.status, 422)
      assert.equal(tiny.body.error?.code, 'avatar_too_many_pixels')
      assert.match(tiny.body.error?.message ?? '', /1x1 with 10 frames: 144010 pixels/)
      assert.equal((await createWithUpload(srv, 'frames-2', 'Frames', (await makeImages()).gif)).status, 200)
    } finally {
      await srv.close()
    }
  })
})
