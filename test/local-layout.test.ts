import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { after, before, describe, it } from 'node:test'
import { startFixtureServer, type FixtureServer } from './helpers/fixtures.js'
import { dataDir, killAll, removeDirs, startServe, until } from './helpers/process.js'
import { COLLECT_AT_ONCE, listFiles, rawGet, startTestServer, type TestServer } from './helpers/server.js'
import { storeLeg } from './helpers/stores.js'
import { leftoversInShard } from '../src/avatars/inventory.js'
import { avatarKeys, contentPath } from '../src/storage/blob-store.js'
import { fileOfKey } from '../src/storage/local.js'

/**
 * Avatar files on local disk: an image's three files share one folder, named by the hash's first
 * two hex digits, whatever their URLs say (`/120x120/ab/cd/ef/<sha256>.jpeg`). Files a folder holds
 * from Agentry's first layout (each file at its URL's path) are still served and collected.
 * Temporary files of writes that never finished (a crash) are deleted once an hour old.
 */
describe('avatar files on local disk', { skip: !storeLeg().endsWith('local') && 'the layout of files on local disk' }, () => {
  let srv: TestServer
  let fx: FixtureServer
  let avatars: string
  before(async () => {
    fx = await startFixtureServer()
    srv = await startTestServer(COLLECT_AT_ONCE)
    avatars = path.join(srv.dataDir, 'avatars')
  })
  after(async () => {
    await srv.close()
    await fx.close()
  })

  async function create (serviceUserId: string, image: string) {
    const res = await srv.call('POST', '/agents', { serviceUserId, name: serviceUserId, avatar: `${fx.url}/${image}` })
    assert.equal(res.status, 200, JSON.stringify(res.body))
    const avatar = res.body.data.avatar
    const [, sha256, ext] = /([0-9a-f]{64})\.(\w+)$/.exec(avatar.info.path as string) as unknown as [string, string, string]
    return { id: res.body.data.id as string, avatar, sha256, ext, urls: [avatar.url.default, avatar.url['120x120'], avatar.url['520x400']] as string[] }
  }

  it('keeps an image\'s three files in one folder named by the hash\'s first two hex digits', async () => {
    const { sha256, ext, avatar } = await create('layout-1', 'photo.jpg')
    assert.equal(avatar.info.path, `/${sha256.slice(0, 2)}/${sha256.slice(2, 4)}/${sha256.slice(4, 6)}/${sha256}.${ext}`, 'the path the contract gives')
    const dir = sha256.slice(0, 2)
    assert.deepEqual(listFiles(avatars).filter((f) => f.includes(sha256)), [
      `${dir}/${sha256}-120x120.${ext}`,
      `${dir}/${sha256}-520x400.${ext}`,
      `${dir}/${sha256}.${ext}`
    ].map((f) => f.split('/').join(path.sep)).sort())
    assert.deepEqual(fs.readdirSync(path.join(avatars, dir), { withFileTypes: true }).filter((e) => e.isDirectory()), [], 'no folder below it')
    // The store lists them by their keys (the URLs' paths).
    const keys = await srv.storedFiles()
    for (const key of [avatar.info.path.slice(1), `120x120${avatar.info.path}`, `520x400${avatar.info.path}`]) assert.ok(keys.includes(key), key)
  })

  it('serves, lists and collects files of the first layout (each at its URL\'s path)', async () => {
    const { id, sha256, ext, urls, avatar } = await create('layout-2', 'photo.png')
    const bytes = await Promise.all(urls.map(async (url) => (await rawGet(url)).body))
    // As the first layout had them: moved to their keys.
    const keys = [avatar.info.path.slice(1), `120x120${avatar.info.path}`, `520x400${avatar.info.path}`] as string[]
    const current = ['', '-120x120', '-520x400'].map((v) => path.join(avatars, sha256.slice(0, 2), `${sha256}${v}.${ext}`))
    const first = keys.map((key) => path.join(avatars, key))
    for (const [i, file] of first.entries()) {
      fs.mkdirSync(path.dirname(file), { recursive: true })
      fs.renameSync(current[i] as string, file)
    }

    for (const [i, url] of urls.entries()) {
      for (const attempt of ['first read', 'read again']) {
        const res = await rawGet(url)
        assert.equal(res.status, 200, `${url}, ${attempt}`)
        assert.ok(res.body.equals(bytes[i] as Buffer), `${url}, ${attempt}: the same bytes`)
      }
    }
    const stored = await srv.storedFiles()
    for (const key of keys) assert.ok(stored.includes(key), `listed: ${key}`)

    // The agent deleted: the files are collected from where the first layout put them.
    assert.equal((await srv.call('DELETE', `/agents/${id}`)).status, 200)
    await until('the files to be collected', () => (first.some((f) => fs.existsSync(f)) ? undefined : true), 5000, 50)
    for (const url of urls) assert.equal((await rawGet(url)).status, 404, url)
    assert.deepEqual(listFiles(avatars).filter((f) => f.includes(sha256)), [])
  })

  it('a look for leftovers shard by shard finds those of either layout, and not an avatar\'s files', async () => {
    // Two images' files left as a killed write leaves them (their avatars taken out by hand), one
    // kept as the current layout has it and one as the first; and a third image an avatar refers to.
    const images = [await create('layout-left-1', 'rotated.jpg'), await create('layout-left-2', 'anim.gif'), await create('layout-kept', 'photo.webp')]
    const [current, first, kept] = images as [Awaited<ReturnType<typeof create>>, Awaited<ReturnType<typeof create>>, Awaited<ReturnType<typeof create>>]
    // The second as the first layout had it: each file at its key.
    const keys = avatarKeys(first.avatar.info.path as string)
    for (const key of [keys.original, keys['120x120'], keys['520x400']]) {
      fs.mkdirSync(path.dirname(path.join(avatars, key)), { recursive: true })
      fs.renameSync(path.join(avatars, fileOfKey(key) as string), path.join(avatars, key))
    }
    const { db } = srv.services.database
    for (const { id, sha256 } of [current, first]) {
      await db.updateTable('agents').set({ avatar_id: null }).where('id', '=', id).execute()
      await db.deleteFrom('avatars').where('sha256', '=', sha256).execute()
    }
    for (const { sha256, ext } of images) {
      const found = await leftoversInShard(db, srv.services.store, sha256.slice(0, 2), { nowMs: Date.now() + 1000, recentMs: 0 })
      const mine = found.images.filter((image) => image.sha256 === sha256)
      if (sha256 === kept.sha256) assert.deepEqual(mine, [], 'an avatar refers to it')
      else assert.deepEqual(mine, [{ sha256, ext, path: contentPath(sha256, ext) }])
    }
  })

  it('answers 404 for a path shaped like no avatar, and for a dot-named file in progress', async () => {
    const { sha256, ext, urls } = await create('layout-3', 'tiny.png')
    const staticBase = (urls[0] as string).slice(0, (urls[0] as string).indexOf('/static/') + '/static/'.length)
    // The disk's own names are not URLs.
    assert.equal((await rawGet(`${staticBase}${sha256.slice(0, 2)}/${sha256}-120x120.${ext}`)).status, 404)
    assert.equal((await rawGet(`${staticBase}${sha256.slice(0, 2)}/${sha256}.${ext}`)).status, 404)
    fs.writeFileSync(path.join(avatars, sha256.slice(0, 2), `.${sha256}.${ext}.abc.tmp`), 'partial')
    assert.equal((await rawGet(`${staticBase}${sha256.slice(0, 2)}/.${sha256}.${ext}.abc.tmp`)).status, 404)
  })
})

describe('temporary files that unfinished writes left behind', { skip: !storeLeg().endsWith('local') && 'temporary files exist on local disk only' }, () => {
  after(() => {
    killAll()
    removeDirs()
  })

  it('are deleted at start once an hour old; fresh ones, finished files and other files stay', async () => {
    const dir = dataDir()
    const avatars = path.join(dir, 'avatars')
    const sha256 = 'ab'.repeat(32)
    const place = (relative: string, ageMs: number) => {
      const file = path.join(avatars, relative)
      fs.mkdirSync(path.dirname(file), { recursive: true })
      fs.writeFileSync(file, 'bytes')
      const at = new Date(Date.now() - ageMs)
      fs.utimesSync(file, at, at)
      return file
    }
    const HOUR = 3600_000
    const old = [
      place(`ab/.${sha256}-120x120.jpeg.0123456789ab.tmp`, 2 * HOUR),
      // In a folder of the first layout too.
      place(`120x120/ab/ab/ab/.${sha256}.jpeg.ba9876543210.tmp`, 25 * HOUR)
    ]
    const kept = [
      place(`ab/.${sha256}.jpeg.00112233aabb.tmp`, 60_000),
      place(`ab/${sha256}.jpeg`, 2 * HOUR),
      place('ab/.keep', 2 * HOUR),
      place(`120x120/ab/ab/ab/${sha256}.jpeg`, 25 * HOUR)
    ]
    const server = await startServe({ DATA_DIR: dir, BOOTSTRAP_TOKEN: 'leftovers-test-token-0123456789' })
    try {
      await until('the old temporary files to be deleted', () => (old.some((f) => fs.existsSync(f)) ? undefined : true), 5000, 50)
      for (const f of kept) assert.ok(fs.existsSync(f), `kept: ${path.relative(avatars, f)}`)
    } finally {
      await server.stop()
    }
  })
})
