// The admin console at /admin, end to end in a real browser (Debian's chromium driven by
// playwright-core) against the real server and a fixture image host on loopback.
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { chromium, type Browser, type Page } from 'playwright-core'
import { rawGet, startTestServer, type TestServer } from './helpers/server.js'
import { startFixtureServer, type FixtureServer } from './helpers/fixtures.js'

const CHROMIUM = '/usr/bin/chromium'
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run']
const RESULTS = path.resolve('test-results')
const DOCS_SHOT = path.resolve('docs/admin.png')

// The few browser globals that the functions run in the page use: this file is compiled for Node
// (no DOM lib), and these declarations stay local to it.
interface PageElement {
  complete: boolean
  naturalWidth: number
  naturalHeight: number
  currentSrc: string
  textContent: string | null
  dataset: Record<string, string | undefined>
  matches: (selector: string) => boolean
  closest: (selector: string) => PageElement | null
  querySelector: (selector: string) => PageElement | null
  blur: () => void
}
declare const document: {
  querySelector: (selector: string) => PageElement | null
  querySelectorAll: (selector: string) => { length: number }
  activeElement: PageElement | null
  documentElement: { scrollWidth: number, clientWidth: number }
  body: unknown
  cookie: string
}
declare const window: Record<string, unknown>
declare const sessionStorage: { getItem: (key: string) => string | null }
declare const localStorage: { length: number }
declare function getComputedStyle (el: unknown): { backgroundColor: string }

const rowCount = (want: number) => document.querySelectorAll('#agent-rows tr').length === want

const haveChromium = fs.existsSync(CHROMIUM)
const inCi = process.env.CI === 'true'
let skip: string | false = false
if (!haveChromium && !inCi) {
  skip = `${CHROMIUM} is missing: the admin console was NOT tested in a browser (apt-get install -y chromium)`
  console.error(`\n${'!'.repeat(100)}\n!!! SKIPPING test/admin.e2e.test.ts: ${skip}\n!!! In CI (CI=true) this fails instead; .ci/run installs chromium.\n${'!'.repeat(100)}\n`)
}

describe('admin console in a real browser', { skip }, () => {
  let srv: TestServer
  let fx: FixtureServer
  let browser: Browser
  let page: Page
  /** Console errors about the Content-Security-Policy or Trusted Types, and uncaught page errors. */
  const violations: string[] = []

  const row = (id: string) => page.locator(`#agent-rows tr[data-id="${id}"]`)
  const shot = async (name: string) => {
    const file = path.join(RESULTS, name)
    await page.screenshot({ path: file })
    return file
  }
  /** Resolves once the row's 120x120 thumbnail has really loaded (decoded, not a broken image). */
  const thumbnailLoaded = async (id: string) => {
    await page.waitForFunction((rowId) => {
      const img = document.querySelector(`#agent-rows tr[data-id="${rowId}"] img.thumb`)
      return img !== null && img.complete && img.naturalWidth > 0
    }, id)
    return await row(id).locator('img.thumb').evaluate((img: PageElement) => ({ w: img.naturalWidth, h: img.naturalHeight, src: img.currentSrc }))
  }

  before(async () => {
    if (!haveChromium) throw new Error(`${CHROMIUM} is missing and CI=true: install it (apt-get install -y chromium; .ci/run does) rather than skip the browser tests`)
    // The console's modules are compiled files (dist/admin, dist/client): make sure they are current.
    execFileSync(process.execPath, ['scripts/ensure-build.mjs'], { stdio: 'inherit' })
    fs.mkdirSync(RESULTS, { recursive: true })
    srv = await startTestServer()
    fx = await startFixtureServer()
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true })
    page = await browser.newPage({ viewport: { width: 1200, height: 800 }, colorScheme: 'light', reducedMotion: 'reduce' })
    page.setDefaultTimeout(10_000)
    page.on('console', (msg) => {
      if (msg.type() === 'error' && /Content.Security.Policy|Trusted ?Type/i.test(msg.text())) violations.push(msg.text())
    })
    page.on('pageerror', (err) => { violations.push(`page error: ${err.message}`) })
  })

  after(async () => {
    await browser?.close()
    await fx?.close()
    await srv?.close()
  })

  it('serves the page without a token and outside the rate limit, with a strict CSP and revalidation', async () => {
    const res = await rawGet(`${srv.url}/admin`)
    assert.equal(res.status, 200)
    assert.match(String(res.headers['content-type']), /^text\/html/)
    const csp = String(res.headers['content-security-policy'])
    assert.match(csp, /default-src 'none'/)
    assert.match(csp, /script-src 'self'(;|$)/, 'no inline scripts')
    assert.match(csp, /connect-src 'self'(;|$)/)
    const staticOrigin = new URL(srv.services.config.staticBaseUrl).origin
    assert.match(csp, new RegExp(`img-src 'self' blob: ${staticOrigin.replace(/[.:/]/g, '\\$&')}(;|$)`))
    assert.equal(res.headers['x-content-type-options'], 'nosniff')
    assert.equal(res.headers['cache-control'], 'no-cache')
    assert.equal(res.headers['x-ratelimit-limit'], undefined)
    assert.equal(res.headers['ratelimit-limit'], undefined)
    const again = await rawGet(`${srv.url}/admin/`, { 'if-none-match': String(res.headers.etag) })
    assert.equal(again.status, 304)

    const client = await rawGet(`${srv.url}/admin/client.js`)
    assert.equal(client.status, 200)
    assert.match(String(client.headers['content-type']), /^text\/javascript/)
    assert.match(client.body.toString(), /class AgentryClient/)
    const main = await rawGet(`${srv.url}/admin/main.js`)
    assert.match(main.body.toString(), /from '\.\/client\.js'/, 'the console imports the served client module')
    for (const bad of ['/admin/..%2Fpackage.json', '/admin/main.ts', '/admin/.tsbuildinfo', '/admin/%2e%2e%2fsrc%2fconfig%2findex.ts']) {
      assert.equal((await rawGet(`${srv.url}${bad}`)).status, 404, bad)
    }
  })

  it('signs in with a token kept in sessionStorage, never in the URL', async () => {
    await page.goto(`${srv.url}/admin`)
    await page.getByLabel('API token').fill('not-a-real-token-0000')
    await page.getByRole('button', { name: 'Sign in' }).click()
    await page.locator('#token-error', { hasText: 'unknown or revoked' }).waitFor()

    await page.getByLabel('API token').fill(srv.token)
    await page.keyboard.press('Enter')
    await page.locator('#console').waitFor()
    await page.locator('#live[data-state="live"]').waitFor()
    await page.locator('#empty', { hasText: 'No agents yet' }).waitFor()
    assert.ok(!page.url().includes(srv.token), 'token not in the URL')
    assert.equal(await page.evaluate(() => sessionStorage.getItem('agentry.admin.token')), srv.token)
    assert.equal(await page.evaluate(() => localStorage.length), 0)
    assert.equal(await page.evaluate(() => document.cookie), '')
  })

  let adaId = ''

  it('creates an agent with an avatar URL and shows its 120x120 thumbnail', async () => {
    await page.getByRole('button', { name: 'New agent' }).click()
    const dialog = page.getByRole('dialog', { name: 'New agent' })
    await dialog.waitFor()
    await dialog.getByLabel('Name').fill('Ada')
    await dialog.getByLabel('Service user id').fill('crm-ada')
    await dialog.getByLabel('Image URL').fill(`${fx.url}/photo.jpg`)
    await dialog.getByRole('button', { name: 'Create agent' }).click()
    await dialog.waitFor({ state: 'hidden' })

    const created = (await srv.call('GET', '/agents/by-service-user-id/crm-ada')).body.data
    adaId = created.id
    await row(adaId).waitFor()
    assert.equal(await row(adaId).locator('th.cell-name').textContent(), 'Ada')
    assert.equal(await row(adaId).getAttribute('data-status'), 'offline')
    const thumb = await thumbnailLoaded(adaId)
    assert.deepEqual({ w: thumb.w, h: thumb.h }, { w: 120, h: 120 })
    assert.equal(thumb.src, created.avatar.url['120x120'])
    await page.locator('#notice', { hasText: 'Created Ada.' }).waitFor()
    await shot('admin-created.png')
  })

  it('edits the agent: name, active flag and an uploaded avatar file', async () => {
    const before = (await srv.call('GET', `/agents/${adaId}`)).body.data
    await row(adaId).getByRole('button', { name: 'Edit Ada' }).click()
    const dialog = page.getByRole('dialog', { name: 'Edit Ada' })
    await dialog.waitFor()
    assert.equal(await dialog.getByLabel('Name').inputValue(), 'Ada')
    await dialog.getByLabel('Name').fill('Ada Lovelace')
    await dialog.getByLabel('or upload an image file').setInputFiles({ name: 'ada.png', mimeType: 'image/png', buffer: fx.images.png })
    await dialog.getByRole('button', { name: 'Save changes' }).click()
    await dialog.waitFor({ state: 'hidden' })

    await row(adaId).locator('th.cell-name', { hasText: 'Ada Lovelace' }).waitFor()
    const after = (await srv.call('GET', `/agents/${adaId}`)).body.data
    assert.equal(after.name, 'Ada Lovelace')
    assert.equal(after.serviceUserId, 'crm-ada', 'unchanged fields are not sent')
    assert.equal(after.avatar.info.ext, 'png')
    assert.notEqual(after.avatar.info.path, before.avatar.info.path)
    const thumb = await thumbnailLoaded(adaId)
    assert.equal(thumb.src, after.avatar.url['120x120'])
    assert.equal(thumb.w, 120)
  })

  it('shows changes made through the API live, without a reload', async () => {
    await page.locator('#live[data-state="live"]').waitFor()
    await page.evaluate(() => { window.sameDocument = true })

    const put = await srv.call('PUT', `/agents/${adaId}`, { status: 'online' })
    assert.equal(put.status, 200)
    await row(adaId).and(page.locator('[data-status="online"]')).waitFor({ timeout: 5000 })
    assert.equal(await row(adaId).locator('.cell-status').textContent(), 'Online')
    await row(adaId).getByRole('button', { name: 'Set offline Ada Lovelace' }).waitFor()

    const made = await srv.call('POST', '/agents', { serviceUserId: 'crm-grace', name: 'Grace Hopper', status: 'online', avatar: `${fx.url}/photo.webp` })
    assert.equal(made.status, 200)
    await row(made.body.data.id).waitFor({ timeout: 5000 })
    assert.equal(await page.locator('#agent-rows tr').first().getAttribute('data-id'), made.body.data.id, 'newest first')
    await page.locator('#availability', { hasText: '2 online' }).waitFor()

    const gone = await srv.call('DELETE', `/agents/${made.body.data.id}`)
    assert.equal(gone.status, 200)
    await row(made.body.data.id).waitFor({ state: 'detached', timeout: 5000 })
    assert.equal(await page.evaluate(() => window.sameDocument), true, 'the page was not reloaded')
  })

  it('shows the API\'s validation errors next to the fields they concern', async () => {
    await page.getByRole('button', { name: 'New agent' }).click()
    const dialog = page.getByRole('dialog', { name: 'New agent' })
    await dialog.getByLabel('Name').fill('   ')
    await dialog.getByLabel('Service user id').fill('crm-blank')
    await dialog.getByRole('button', { name: 'Create agent' }).click()
    const nameError = dialog.locator('#err-name')
    await nameError.waitFor()
    assert.match(await nameError.textContent() ?? '', /^Name must contain a non-space character/)
    assert.equal(await dialog.getByLabel('Name').getAttribute('aria-invalid'), 'true')
    assert.ok(await dialog.getByLabel('Name').evaluate((el: PageElement) => el === document.activeElement), 'focus moves to the field')
    assert.equal(await dialog.locator('#err-avatar').isVisible(), false)

    await dialog.getByLabel('Name').fill('Blank Avatar')
    await dialog.getByLabel('Image URL').fill(`${fx.url}/text.txt`)
    await dialog.getByRole('button', { name: 'Create agent' }).click()
    const avatarError = dialog.locator('#err-avatar')
    await avatarError.waitFor()
    assert.ok((await avatarError.textContent() ?? '').length > 10)
    assert.equal(await nameError.isVisible(), false, 'the fixed field\'s error is gone')
    assert.equal(await dialog.getByLabel('Image URL').getAttribute('aria-invalid'), 'true')
    // The message sits inside the avatar fieldset, right under its inputs.
    assert.equal(await avatarError.evaluate((el: PageElement) => el.closest('fieldset')?.querySelector('legend')?.textContent), 'Avatar')
    await shot('admin-validation.png')

    await dialog.getByLabel('Service user id').fill('crm-ada')
    await dialog.getByLabel('Image URL').fill('')
    await dialog.getByRole('button', { name: 'Create agent' }).click()
    await dialog.locator('#err-serviceUserId', { hasText: 'already used' }).waitFor()

    await page.keyboard.press('Escape')
    await dialog.waitFor({ state: 'hidden' })
    assert.equal((await srv.call('GET', '/agents/by-service-user-id/crm-blank')).status, 404, 'nothing was created')
  })

  it('shows the roster with thumbnails (the README screenshot)', async () => {
    const add = async (body: Record<string, unknown>) => {
      const res = await srv.call('POST', '/agents', body)
      assert.equal(res.status, 200, JSON.stringify(res.body))
      return res.body.data.id as string
    }
    const ids = [
      await add({ serviceUserId: 'crm-alan', name: 'Alan Turing', avatar: `${fx.url}/rotated.jpg` }),
      await add({ serviceUserId: 'crm-katherine', name: 'Katherine Johnson', status: 'online' }),
      await add({ serviceUserId: 'crm-margaret', name: 'Margaret Hamilton', status: 'online', avatar: `${fx.url}/photo.webp` }),
      await add({ serviceUserId: 'crm-edsger', name: 'Edsger Dijkstra', active: false, avatar: `${fx.url}/anim.gif` })
    ]
    for (const id of ids) await row(id).waitFor()
    for (const id of [adaId, ids[0]!, ids[2]!, ids[3]!]) assert.equal((await thumbnailLoaded(id)).w, 120)
    await page.locator('#availability', { hasText: '3 online' }).waitFor()
    await page.locator('#notice').evaluate((el: PageElement) => { el.textContent = '' })
    await page.evaluate(() => { document.activeElement?.blur() })
    await page.mouse.move(0, 0)
    const file = await shot('admin-table.png')
    if (!fs.existsSync(DOCS_SHOT) || process.env.UPDATE_SCREENSHOTS === '1') {
      fs.mkdirSync(path.dirname(DOCS_SHOT), { recursive: true })
      fs.copyFileSync(file, DOCS_SHOT)
    }
    await page.emulateMedia({ colorScheme: 'dark' })
    assert.notEqual(await page.evaluate(() => getComputedStyle(document.body).backgroundColor), 'rgb(246, 247, 249)', 'dark scheme applies')
    await shot('admin-table-dark.png')
    await page.emulateMedia({ colorScheme: 'light' })
  })

  it('toggles status and active from the table, with the keyboard', async () => {
    const toggle = row(adaId).getByRole('button', { name: 'Set offline Ada Lovelace' })
    await toggle.focus()
    await page.keyboard.press('Enter')
    await row(adaId).and(page.locator('[data-status="offline"]')).waitFor()
    assert.equal((await srv.call('GET', `/agents/${adaId}`)).body.data.status, 'offline')
    assert.equal(await page.evaluate(() => document.activeElement?.dataset.action), 'status', 'focus stays on the toggle')
    assert.ok(await page.evaluate(() => document.activeElement?.matches(':focus-visible')), 'focus is visible')

    await row(adaId).getByRole('button', { name: 'Deactivate Ada Lovelace' }).click()
    await row(adaId).and(page.locator('[data-active="false"]')).waitFor()
    assert.equal((await srv.call('GET', `/agents/${adaId}`)).body.data.active, false)
    await row(adaId).getByRole('button', { name: 'Activate Ada Lovelace' }).click()
    await row(adaId).and(page.locator('[data-active="true"]')).waitFor()
  })

  it('searches and filters with the API, and pages with "Load more"', async () => {
    const filters = page.getByRole('search')
    for (let i = 1; i <= 30; i++) {
      const res = await srv.call('POST', '/agents', { serviceUserId: `bulk-${i}`, name: `Bulk Agent ${String(i).padStart(2, '0')}`, status: i % 3 === 0 ? 'online' : 'offline' })
      assert.equal(res.status, 200)
    }
    await filters.getByLabel('Search names').fill('bulk agent')
    await page.waitForFunction(rowCount, 25)
    await page.getByRole('button', { name: 'Load more' }).click()
    await page.waitForFunction(rowCount, 30)
    await page.getByRole('button', { name: 'Load more' }).waitFor({ state: 'hidden' })
    const names = await page.locator('#agent-rows th.cell-name').allTextContents()
    assert.equal(new Set(names).size, 30, 'every agent once')
    assert.equal(names[0], 'Bulk Agent 30', 'newest first')

    await filters.getByLabel('Status').selectOption('online')
    await page.waitForFunction(rowCount, 10)
    assert.deepEqual(new Set(await page.locator('#agent-rows tr').evaluateAll((rows: PageElement[]) => rows.map((r) => r.dataset.status))), new Set(['online']))

    await filters.getByLabel('Search names').fill('nobody-has-this-name')
    await page.locator('#empty', { hasText: 'No agents match' }).waitFor()
    await filters.getByLabel('Search names').fill('')
    await filters.getByLabel('Status').selectOption('')
    await filters.getByLabel('Active').selectOption('false')
    await page.waitForFunction(rowCount, 1)
    assert.equal(await page.locator('#agent-rows th.cell-name').textContent(), 'Edsger Dijkstra')
    await filters.getByLabel('Active').selectOption('')
    // 30 newer agents push Ada off the first page; the search brings her back.
    await page.waitForFunction(rowCount, 25)
    assert.equal(await row(adaId).count(), 0)
    await filters.getByLabel('Search names').fill('LOVELACE')
    await row(adaId).waitFor()
  })

  it('deletes only after confirmation', async () => {
    await row(adaId).getByRole('button', { name: 'Delete Ada Lovelace' }).click()
    const confirm = page.getByRole('dialog', { name: 'Delete agent?' })
    await confirm.waitFor()
    await confirm.getByRole('button', { name: 'Cancel' }).click()
    await confirm.waitFor({ state: 'hidden' })
    assert.equal((await srv.call('GET', `/agents/${adaId}`)).status, 200, 'cancel keeps the agent')

    await row(adaId).getByRole('button', { name: 'Delete Ada Lovelace' }).click()
    await confirm.getByRole('button', { name: 'Delete' }).click()
    await row(adaId).waitFor({ state: 'detached' })
    assert.equal((await srv.call('GET', `/agents/${adaId}`)).status, 404)
    await page.locator('#notice', { hasText: 'Deleted Ada Lovelace.' }).waitFor()
  })

  it('fits a phone screen', async () => {
    await page.getByRole('search').getByLabel('Search names').fill('')
    await page.waitForFunction(rowCount, 25)
    await page.setViewportSize({ width: 390, height: 844 })
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth)
    assert.ok(overflow <= 0, `no horizontal scrolling (overflow ${overflow}px)`)
    await shot('admin-phone.png')
    await page.setViewportSize({ width: 1200, height: 800 })
  })

  it('signs out and forgets the token', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click()
    await page.getByLabel('API token').waitFor()
    assert.equal(await page.evaluate(() => sessionStorage.getItem('agentry.admin.token')), null)
    await page.reload()
    await page.getByLabel('API token').waitFor()
    assert.equal(await page.locator('#console').isVisible(), false)
    assert.deepEqual(violations, [], 'no CSP or Trusted Types violations, no page errors')
  })
})
