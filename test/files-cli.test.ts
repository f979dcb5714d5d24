import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { after, before, describe, it } from 'node:test'
import sharp from 'sharp'
import { COLLECT_AT_ONCE, holdDatabaseLock, metricValue, startTestServer, TEST_TOKEN, type TestServer } from './helpers/server.js'
import { makeImages, startFixtureServer, type FixtureServer } from './helpers/fixtures.js'
import { killAll, ROOT, runCli, startServe, until } from './helpers/process.js'
import { takeInventory } from '../src/avatars/inventory.js'
import { avatarKeys, contentPath } from '../src/storage/blob-store.js'

/** A write then stores its files and waits for its row (its avatar's insert, on PostgreSQL). */
const holdWrites = async (srv: TestServer) => await holdDatabaseLock(srv, { table: 'avatars', mode: 'SHARE' })

// `agentry files check` and `agentry files sweep`, run as an operator runs them, against the stores
// of a running server: on the embedded defaults, and on PostgreSQL + S3 in that leg of the matrix.
describe('agentry files check / sweep', () => {
  let srv: TestServer
  let fx: FixtureServer
  const files = (env: Record<string, string> = {}) => async (sub: string) => await runCli(['files', sub], { ...srv.sharedEnv, ...env }, 30_000)
  const check = files()
  before(async () => {
    execFileSync(process.execPath, ['scripts/ensure-build.mjs'], { cwd: ROOT, stdio: 'inherit', timeout: 120_000 })
    fx = await startFixtureServer()
    // No upkeep on this one: on SQLite a write waiting for the lock held below would block this
    // process (better-sqlite3 waits synchronously). Another server collects files when it is time.
    srv = await startTestServer({ ...COLLECT_AT_ONCE, MAINTENANCE_INTERVAL_MS: '3600000' })
  })
  after(async () => {
    killAll()
    await srv.close()
    await fx.close()
  })

  it('finds the files of a write killed before its row, hands them to the collector, reports avatars whose files are missing and makes lost sizes again', async () => {
    const a = await srv.call('POST', '/agents', { serviceUserId: 'files-a', name: 'A', avatar: `${fx.url}/photo.png` })
    const b = await srv.call('POST', '/agents', { serviceUserId: 'files-b', name: 'B', avatar: `${fx.url}/photo.webp` })
    assert.equal(a.status, 200)
    assert.equal(b.status, 200)
    const clean = await check('check')
    assert.equal(clean.code, 0, clean.stdout + clean.stderr)
    assert.match(clean.stdout, /: 6 files, 2 images\./)
    assert.match(clean.stdout, /2 images that avatars refer to, each with its three files/)
    assert.match(clean.stdout, /No problems found/)

    // A second server, killed (SIGKILL) once it has stored an avatar's files but before its row is
    // written: the crash this command is for.
    const victim = await startServe({ ...srv.sharedEnv, AVATAR_ALLOW_PRIVATE_NETWORKS: 'true', MAINTENANCE_INTERVAL_MS: '3600000' })
    const before = await srv.storedFiles()
    const lock = await holdWrites(srv)
    let leftover: string[]
    try {
      const post = fetch(`${victim.url}/api/external/v1/agents`, {
        method: 'POST',
        headers: { authorization: `Bearer ${TEST_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ serviceUserId: 'files-killed', name: 'Killed', avatar: `${fx.url}/anim.gif` })
      }).then(() => 'answered', () => 'no answer')
      leftover = await until('the killed write to store its files', async () => {
        const now = (await srv.storedFiles()).filter((k) => !before.includes(k))
        return now.length === 3 ? now : undefined
      }, 10_000, 20)
      victim.child.kill('SIGKILL')
      await victim.exited()
      assert.equal(await post, 'no answer')
    } finally {
      await lock.release()
    }
    const list = await srv.call('GET', '/agents')
    assert.deepEqual(list.body.data.map((x: { serviceUserId: string }) => x.serviceUserId).sort(), ['files-a', 'files-b'], 'no row for the killed write')
    const leftoverPath = `/${leftover.find((k) => !k.includes('x'))}`

    // With the production grace, files that young may belong to a write on its way: not judged yet.
    const young = await files({ AVATAR_GC_GRACE_SECONDS: '300' })('check')
    assert.equal(young.code, 0, young.stdout + young.stderr)
    assert.match(young.stdout, /1 image too recent to judge \(written in the last 300 seconds/)

    // An avatar loses its sizes (a bucket restored from an old copy, a folder cleaned by hand).
    const lost = ['120x120', '520x400'].map((size) => `${size}${a.body.data.avatar.info.path as string}`)
    for (const key of lost) await srv.services.store.delete(key)
    let local = ''
    if (srv.sharedEnv.STORAGE_URL === undefined) {
      // And a file that is no avatar's, put there by someone else: reported, never touched.
      local = path.join(srv.dataDir, 'avatars', 'README.txt')
      fs.writeFileSync(local, 'not ours')
    }

    const found = await check('check')
    assert.equal(found.code, 1, 'problems found: exit 1')
    assert.match(found.stdout, /1 image that avatars refer to, each with its three files/)
    assert.match(found.stdout, /1 image \(3 files\) that nothing refers to and nothing will delete/)
    assert.ok(found.stdout.includes(`    ${leftoverPath}\n`), found.stdout)
    assert.match(found.stdout, /agentry files sweep/)
    assert.match(found.stdout, /1 image that avatars refer to with files missing/)
    assert.ok(found.stdout.includes(`${a.body.data.avatar.info.path as string} (1 avatar): missing ${lost.join(', ')}`), found.stdout)
    if (local !== '') assert.match(found.stdout, /1 file that is not an avatar file \(left alone\):\n {4}README\.txt/)

    assert.match(found.stdout, /`agentry files sweep` makes missing sizes again from the original/)

    // Sweep: the leftovers go on the collector's schedule, and a running server deletes them; the
    // lost sizes are made again from the original.
    const swept = await check('sweep')
    assert.equal(swept.code, 0, swept.stdout + swept.stderr)
    assert.match(swept.stdout, /Handed 1 image to the file collector/)
    assert.match(swept.stdout, /Made 2 missing files of 1 image again from its original: those avatars' URLs answer again\./)
    const collector = await startTestServer({ ...srv.sharedEnv, ...COLLECT_AT_ONCE })
    try {
      await until('the leftover files to be collected', async () => {
        const now = await srv.storedFiles()
        return leftover.every((k) => !now.includes(k)) ? true : undefined
      }, 10_000, 100)
    } finally {
      await collector.close()
    }
    const stored = await srv.storedFiles()
    for (const key of before) assert.ok(stored.includes(key), `${key} is an avatar's: kept, or made again`)
    if (local !== '') assert.equal(fs.readFileSync(local, 'utf8'), 'not ours')
    // The 640x480 PNG's sizes, as its ingest made them.
    for (const [size, width, height] of [['120x120', 120, 120], ['520x400', 520, 390]] as const) {
      const res = await fetch(a.body.data.avatar.url[size] as string)
      assert.equal(res.status, 200)
      assert.equal(res.headers.get('content-type'), 'image/png')
      const meta = await sharp(Buffer.from(await res.arrayBuffer())).metadata()
      assert.deepEqual([meta.format, meta.width, meta.height], ['png', width, height])
    }

    // An original cannot be made again: sweep says so, and exits 1.
    const bPath = b.body.data.avatar.info.path as string
    await srv.services.store.delete(bPath.slice(1))
    const unmendable = await check('sweep')
    assert.equal(unmendable.code, 1, 'an avatar still lacks a file: exit 1')
    assert.ok(unmendable.stdout.includes(`Could not mend 1 image; set its avatars again to store the files anew:\n    ${bPath} (1 avatar): its original is missing`), unmendable.stdout)

    // Setting the avatar again stores the missing file anew.
    assert.equal((await srv.call('PUT', `/agents/${b.body.data.id as string}`, { avatar: `${fx.url}/photo.webp` })).status, 200)
    if (local !== '') fs.rmSync(local)
    const fixed = await check('check')
    assert.equal(fixed.code, 0, fixed.stdout + fixed.stderr)
    assert.match(fixed.stdout, /: 6 files, 2 images\./)
    assert.match(fixed.stdout, /No problems found/)
  })

  it('makes the lost sizes of an image that fits in 520x400 as its ingest did: that size is the original, byte for byte', async () => {
    // A 300x200 JPEG turned upright by its EXIF orientation: its stored original is a new encode.
    const c = await srv.call('POST', '/agents', { serviceUserId: 'files-fits', name: 'Fits', avatar: `${fx.url}/rotated.jpg` })
    assert.equal(c.status, 200)
    const keys = avatarKeys(c.body.data.avatar.info.path as string)
    const store = srv.services.store
    const original = await store.get(keys.original)
    assert.ok(original !== undefined)
    assert.deepEqual(await store.get(keys['520x400']), original, 'the ingest stored the 200x300 original as its 520x400 size')
    for (const key of [keys['120x120'], keys['520x400']]) await store.delete(key)
    assert.deepEqual(await Promise.all([keys.original, keys['120x120'], keys['520x400']].map(async (k) => await store.has(k))), [true, false, false])
    // An avatar made in the last second is too recent to judge (created_at is in whole seconds).
    const swept = await until('sweep to mend the image', async () => {
      const r = await check('sweep')
      return r.stdout.includes('Made 2 missing files of 1 image again from its original') ? r : undefined
    }, 10_000, 250)
    assert.equal(swept.code, 0, swept.stdout + swept.stderr)
    assert.deepEqual(await store.get(keys['520x400']), original)
    const small = await store.get(keys['120x120'])
    assert.ok(small !== undefined)
    const meta = await sharp(small).metadata()
    assert.deepEqual([meta.format, meta.width, meta.height], ['jpeg', 120, 120])
  })

  it('pages through the avatar records and the leftovers (one image a page)', async () => {
    // Four images (the two avatars of the test above may be there too), two of them referred to.
    for (const [id, image] of [['page-1', 'photo.jpg'], ['page-2', 'rotated.jpg']]) {
      assert.equal((await srv.call('POST', '/agents', { serviceUserId: id, name: id, avatar: `${fx.url}/${image as string}` })).status, 200)
    }
    const images = await makeImages()
    for (const data of [images.tiny, images.gif]) {
      const sha256 = createHash('sha256').update(data).digest('hex')
      const ext = data === images.gif ? 'gif' : 'png'
      const keys = avatarKeys(contentPath(sha256, ext))
      // Files no row names, as a killed write leaves them.
      await srv.services.store.putAll([keys.original, keys['120x120'], keys['520x400']].map((key) => ({ key, data, contentType: `image/${ext}` })))
    }
    const whole = await takeInventory(srv.services.database.db, srv.services.store, { nowMs: Date.now() + 1000, recentMs: 0 })
    const paged = await takeInventory(srv.services.database.db, srv.services.store, { nowMs: Date.now() + 1000, recentMs: 0, pageSize: 1 })
    assert.deepEqual(paged, whole)
    assert.ok(whole.whole >= 2, `${whole.whole} whole`)
    assert.equal(whole.whole + whole.leftovers.images.length + whole.incomplete.length + whole.collecting + whole.recent, whole.images)
    assert.ok(whole.leftovers.images.length >= 2)
  })

  it('a sweep run while a server holds the write lock waits for its turn, then hands the leftovers over (SQLite)', {
    skip: process.env.TEST_DATABASE_URL !== undefined && 'SQLite only: PostgreSQL writers wait for each other\'s locks by themselves'
  }, async () => {
    // A leftover to hand over (the test above may have left others).
    const data = await sharp({ create: { width: 24, height: 24, channels: 3, background: '#00aa55' } }).png().toBuffer()
    const keys = avatarKeys(contentPath(createHash('sha256').update(data).digest('hex'), 'png'))
    await srv.services.store.putAll([keys.original, keys['120x120'], keys['520x400']].map((key) => ({ key, data, contentType: 'image/png' })))
    // Another process in the middle of a write transaction, for 2 s. A transaction that began by
    // reading could not wait for it: its first write would fail at once with SQLITE_BUSY.
    const lock = await holdWrites(srv)
    let ended = false
    const sweep = check('sweep').finally(() => { ended = true })
    try {
      await new Promise((resolve) => setTimeout(resolve, 2000))
      assert.equal(ended, false, 'the sweep waits for the lock')
    } finally {
      await lock.release()
    }
    const swept = await sweep
    assert.equal(swept.code, 0, swept.stdout + swept.stderr)
    assert.match(swept.stdout, /Handed \d+ images? to the file collector/)
    const again = await check('check')
    assert.doesNotMatch(again.stdout, /that nothing refers to and nothing will delete/, 'the leftover is on the collector\'s schedule')
  })

  it('an unknown files subcommand is a usage error', async () => {
    const r = await check('tidy')
    assert.equal(r.code, 2)
    assert.match(r.stderr, /unknown files subcommand "tidy"/)
  })
})

// The same leftovers, found by a running server on its own (AVATAR_LEFTOVERS_SWEEP_SECONDS), on the
// embedded defaults and on PostgreSQL + S3 in that leg of the matrix.
describe('a running server hands leftovers to the file collector by itself', () => {
  let srv: TestServer
  let fx: FixtureServer
  before(async () => {
    fx = await startFixtureServer()
    // This one never looks, nor collects: the servers started below on its stores do.
    srv = await startTestServer({ MAINTENANCE_INTERVAL_MS: '3600000', AVATAR_LEFTOVERS_SWEEP_SECONDS: '0' })
  })
  after(async () => {
    await srv.close()
    await fx.close()
  })

  /** A server on srv's stores that looks through them every second, until it has looked once; then `check` runs and it closes. */
  async function afterOneLook (env: Record<string, string>, check: (other: TestServer) => Promise<void>): Promise<void> {
    const other = await startTestServer({ ...srv.sharedEnv, AVATAR_LEFTOVERS_SWEEP_SECONDS: '1', ...env })
    try {
      await until('a look through the whole store', async () => await metricValue(other, 'agentry_avatar_leftover_sweeps_total') >= 1 ? true : undefined, 15_000, 100)
      await check(other)
    } finally {
      await other.close()
    }
  }

  it('files no avatar refers to and the collector does not know are handed to it and deleted; young ones wait, an avatar\'s stay', async () => {
    const agent = await srv.call('POST', '/agents', { serviceUserId: 'left-a', name: 'A', avatar: `${fx.url}/photo.png` })
    assert.equal(agent.status, 200)
    const kept = await srv.storedFiles()
    assert.equal(kept.length, 3)
    // An image's three files and no row naming them, as a write killed between the two leaves them.
    const data = await sharp({ create: { width: 20, height: 20, channels: 3, background: '#aa3300' } }).png().toBuffer()
    const keys = avatarKeys(contentPath(createHash('sha256').update(data).digest('hex'), 'png'))
    const leftover = [keys.original, keys['120x120'], keys['520x400']]
    await srv.services.store.putAll(leftover.map((key) => ({ key, data, contentType: 'image/png' })))

    // With the production grace, files this young may belong to a write on its way: left alone.
    await afterOneLook({ AVATAR_GC_GRACE_SECONDS: '300' }, async (other) => {
      assert.equal(await metricValue(other, 'agentry_avatar_leftover_images_total'), 0)
    })
    assert.deepEqual(await srv.storedFiles(), [...kept, ...leftover].sort())

    // With no grace: handed over at the first look, and deleted by the collector.
    await afterOneLook(COLLECT_AT_ONCE, async (other) => {
      assert.equal(await metricValue(other, 'agentry_avatar_leftover_images_total'), 1)
      await until('the leftover files to be collected', async () => {
        const now = await srv.storedFiles()
        return leftover.every((k) => !now.includes(k)) ? true : undefined
      }, 10_000, 100)
    })
    assert.deepEqual(await srv.storedFiles(), kept, 'the avatar\'s files stay')
    const served = await fetch(agent.body.data.avatar.url['120x120'] as string)
    assert.equal(served.status, 200)
  })
})
