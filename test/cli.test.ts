import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import net, { type AddressInfo } from 'node:net'
import path from 'node:path'
import { after, afterEach, before, describe, it } from 'node:test'
import SQLite from 'better-sqlite3'
import { Migrator, type Migration } from 'kysely'
import { openDatabase } from '../src/db/index.js'
import { migrations } from '../src/db/migrate.js'
import { startFixtureServer, type FixtureServer } from './helpers/fixtures.js'
import { call, dataDir, killAll, lastWord, oneShot, removeDirs, ROOT, runCli, startServe, until, type CliResult, type Reply, type ServeProcess } from './helpers/process.js'

// The real `agentry` command and the real server process, as an operator runs them: `node bin/agentry.js ...`
// with configuration in the environment and a fresh DATA_DIR each time.

const TOKEN = /^agt_[\w-]{40,}$/
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/
const AGENTS = '/api/external/v1/agents'
const BOOTSTRAP = 'some-long-token-1234567890'

const bearer = (token: string) => ({ authorization: `Bearer ${token}` })

/** `tokens create --widget NAME` on dir; returns the printed token and its id. */
async function createToken (dir: string, widget: string): Promise<{ token: string, id: string }> {
  const r = await runCli(['tokens', 'create', '--widget', widget], { DATA_DIR: dir })
  assert.equal(r.code, 0, r.stderr)
  const token = lastWord(r.stdout)
  assert.match(token, TOKEN)
  const id = r.stdout.split(/\s+/).find((w) => UUID.test(w))
  assert.ok(id !== undefined, `no token id in: ${r.stdout}`)
  return { token, id }
}

describe('agentry command and server process', () => {
  const servers: ServeProcess[] = []
  const serve = async (env: Record<string, string>) => {
    const s = await startServe(env)
    servers.push(s)
    return s
  }

  before(() => {
    execFileSync(process.execPath, ['scripts/ensure-build.mjs'], { cwd: ROOT, stdio: 'inherit', timeout: 120_000 })
  })
  afterEach(async () => {
    await Promise.allSettled(servers.splice(0).map((s) => s.stop(3_000)))
  })
  after(() => {
    killAll()
    removeDirs()
  })

  describe('tokens', () => {
    it('`tokens create --widget acme` prints the token last, and a server on the same DATA_DIR accepts it', async () => {
      const dir = dataDir()
      const r = await runCli(['tokens', 'create', '--widget', 'acme'], { DATA_DIR: dir })
      assert.equal(r.code, 0, r.stderr)
      assert.match(r.stdout, /acme/)
      const token = lastWord(r.stdout)
      assert.match(token, TOKEN)

      const s = await serve({ DATA_DIR: dir })
      assert.doesNotMatch(s.stdout(), /agt_/, 'a token already existed, so serve must not create one')
      const res = await call(`${s.url}${AGENTS}`, { headers: bearer(token) })
      assert.equal(res.status, 200, res.text)
      assert.deepEqual(res.body, { status: 200, data: [] })

      const wrong = await call(`${s.url}${AGENTS}`, { headers: bearer(`${token}x`) })
      assert.equal(wrong.status, 401)
      assert.equal(wrong.body.error.code, 'unauthorized')
    })

    it('`tokens list` shows ids and widget names, never the tokens', async () => {
      const dir = dataDir()
      const empty = await runCli(['tokens', 'list'], { DATA_DIR: dir })
      assert.equal(empty.code, 0, empty.stderr)
      assert.match(empty.stdout, /no tokens/i)

      // The schema exists now (the list above migrated), so the two can run side by side.
      const [a, b] = await Promise.all([createToken(dir, 'acme'), createToken(dir, 'beta-widget')])
      const r = await runCli(['tokens', 'list'], { DATA_DIR: dir })
      assert.equal(r.code, 0, r.stderr)
      const lines = r.stdout.trim().split('\n')
      assert.equal(lines.length, 2, r.stdout)
      const lineA = lines.find((l) => l.includes(a.id))
      const lineB = lines.find((l) => l.includes(b.id))
      assert.ok(lineA !== undefined && lineB !== undefined, r.stdout)
      assert.match(lineA, /acme/)
      assert.match(lineB, /beta-widget/)
      assert.match(lineA, /active/)
      for (const secret of [a.token, b.token]) {
        assert.ok(!r.stdout.includes(secret) && !r.stderr.includes(secret), 'tokens list printed a token')
        assert.ok(!r.stdout.includes(secret.slice(4, 24)), 'tokens list printed part of a token')
      }
    })

    it('`tokens revoke` by id and by token: a running server refuses the token within 2 s; unknown ids exit 1', async () => {
      const dir = dataDir()
      // Both on a fresh DATA_DIR at once: each migrates, and the second waits for the first (see 'migrate').
      const [a, b] = await Promise.all([createToken(dir, 'acme'), createToken(dir, 'acme')])
      const s = await serve({ DATA_DIR: dir })
      const status = async (token: string) => (await call(`${s.url}${AGENTS}`, { headers: bearer(token) })).status
      // Both work, and are now in the server's lookup cache.
      assert.equal(await status(a.token), 200)
      assert.equal(await status(b.token), 200)

      const refusedWithin2s = async (token: string, revokedAt: number) => {
        await until('the server to refuse the revoked token', async () => (await status(token)) === 401 ? true : undefined, 2_000, 50)
        assert.ok(Date.now() - revokedAt <= 2_000, `refused after ${Date.now() - revokedAt} ms`)
      }

      const byId = await runCli(['tokens', 'revoke', a.id], { DATA_DIR: dir })
      assert.equal(byId.code, 0, byId.stderr)
      assert.match(byId.stdout, /revoked/i)
      await refusedWithin2s(a.token, Date.now())
      assert.equal(await status(b.token), 200, 'revoking one token left the other alone')

      const byToken = await runCli(['tokens', 'revoke', b.token], { DATA_DIR: dir })
      assert.equal(byToken.code, 0, byToken.stderr)
      await refusedWithin2s(b.token, Date.now())
      const refused = await call(`${s.url}${AGENTS}`, { headers: bearer(b.token) })
      assert.equal(refused.body.status, 401)
      assert.equal(refused.body.error.code, 'unauthorized')

      const list = await runCli(['tokens', 'list'], { DATA_DIR: dir })
      assert.equal(list.stdout.trim().split('\n').filter((l) => /revoked/.test(l)).length, 2, list.stdout)

      const [unknown, again] = await Promise.all([
        runCli(['tokens', 'revoke', '00000000-0000-4000-8000-000000000000'], { DATA_DIR: dir }),
        runCli(['tokens', 'revoke', a.id], { DATA_DIR: dir })
      ])
      assert.equal(unknown.code, 1)
      assert.match(unknown.stderr, /no active token/i)
      assert.equal(again.code, 1, 'revoking a revoked token is not a success')
    })

    it('usage errors exit 2 with a message', async () => {
      const dir = dataDir()
      const cli = (...args: string[]) => runCli(args, { DATA_DIR: dir })
      // None of these gets as far as the database, so they can run side by side.
      const [noWidget, blankWidget, unknown, unknownSub, noArg, unknownOption, help] = await Promise.all([
        cli('tokens', 'create'),
        cli('tokens', 'create', '--widget', '  '),
        cli('frobnicate'),
        cli('tokens', 'frobnicate'),
        cli('tokens', 'revoke'),
        cli('tokens', 'list', '--bogus'),
        cli('--help')
      ])
      assert.equal(noWidget.code, 2)
      assert.match(noWidget.stderr, /--widget/)
      assert.match(noWidget.stderr, /Usage: agentry/)
      assert.equal(noWidget.stdout, '')

      assert.equal(blankWidget.code, 2)
      assert.match(blankWidget.stderr, /--widget/)

      assert.equal(unknown.code, 2)
      assert.match(unknown.stderr, /unknown command "frobnicate"/)
      assert.match(unknown.stderr, /Usage: agentry/)

      assert.equal(unknownSub.code, 2)
      assert.match(unknownSub.stderr, /frobnicate/)

      assert.equal(noArg.code, 2)
      assert.match(noArg.stderr, /revoke/)

      assert.equal(unknownOption.code, 2)
      assert.match(unknownOption.stderr, /--bogus/)

      assert.equal(help.code, 0)
      assert.match(help.stdout, /tokens create --widget NAME/)
    })
    it('`tokens create --widget` with no value is a usage error (exit 2), not a crash', async () => {
      const r = await runCli(['tokens', 'create', '--widget'], { DATA_DIR: dataDir() })
      assert.equal(r.code, 2, r.stderr)
      assert.match(r.stderr, /--widget/)
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace')
    })
    it('`tokens create` on an in-memory database is refused (exit 2): the token would work nowhere', async () => {
      const r = await runCli(['tokens', 'create', '--widget', 'acme'], { DATA_DIR: dataDir(), DATABASE_URL: 'sqlite::memory:' })
      assert.equal(r.code, 2, r.stderr)
      assert.match(r.stderr, /sqlite::memory:/)
      assert.doesNotMatch(r.stdout, /agt_/, 'no token printed')
    })
  })

  describe('serve', () => {
    it('with no token at all, the first start prints one (and a curl line); the second start prints none', async () => {
      const dir = dataDir()
      const first = await serve({ DATA_DIR: dir })
      // The token is printed just after the listening line, once it is stored.
      const out = await until('the first token to be printed', () => (first.stdout().includes('curl') ? first.stdout() : undefined), 5000)
      const tokens = [...new Set(out.match(/agt_[\w-]+/g) ?? [])]
      assert.equal(tokens.length, 1, `expected exactly one token in:\n${out}`)
      const token = tokens[0]!
      assert.match(token, TOKEN)
      assert.equal(out.match(/shown only this once/g)?.length, 1, out)
      const curl = out.split('\n').find((l) => l.includes('curl'))
      assert.ok(curl !== undefined, `no curl line in:\n${out}`)
      assert.ok(curl.includes(token), curl)
      assert.ok(curl.includes(`${first.url}${AGENTS}`), curl)
      for (const line of first.logs()) assert.ok(!JSON.stringify(line).includes(token), 'the token went into a log line')

      const res = await call(`${first.url}${AGENTS}`, { headers: bearer(token) })
      assert.equal(res.status, 200)
      assert.deepEqual(res.body, { status: 200, data: [] })
      assert.equal(await first.stop(), 0)

      const second = await serve({ DATA_DIR: dir })
      assert.doesNotMatch(second.stdout(), /agt_|shown only|curl/)
      assert.equal((await call(`${second.url}${AGENTS}`, { headers: bearer(token) })).status, 200, 'the first token still works')
    })

    it('with BOOTSTRAP_TOKEN, accepts that token from its first answer and prints nothing about creating one', async () => {
      const dir = dataDir()
      const s = await serve({ DATA_DIR: dir, BOOTSTRAP_TOKEN: BOOTSTRAP })
      assert.doesNotMatch(s.stdout(), /agt_|shown only|curl|created/i)
      for (const line of s.stdout().split('\n')) {
        if (line.trim() !== '') assert.ok(line.startsWith('{'), `a line that is not a log line: ${line}`)
      }
      // The first request, as soon as it says it listens: the token must not be created a moment later.
      const res = await call(`${s.url}${AGENTS}`, { headers: bearer(BOOTSTRAP) })
      assert.equal(res.status, 200, res.text)
      assert.deepEqual(res.body, { status: 200, data: [] })
      const bare = await call(`${s.url}${AGENTS}`, { headers: { authorization: BOOTSTRAP } })
      assert.equal(bare.status, 200, 'the bare token is accepted too')
      const none = await call(`${s.url}${AGENTS}`)
      assert.equal(none.status, 401)
      assert.equal(none.body.error.code, 'unauthorized')
    })

    it('refuses bad configuration: non-zero exit and a message naming the variable', async () => {
      const cases: Array<[Record<string, string>, string]> = [
        [{ PORT: 'notanumber' }, 'PORT'],
        [{ AVATAR_MAX_BYTES: '-5' }, 'AVATAR_MAX_BYTES'],
        [{ DATABASE_URL: 'mysql://x' }, 'DATABASE_URL'],
        [{ AVATAR_ALLOW_PRIVATE_NETWORKS: 'maybe' }, 'AVATAR_ALLOW_PRIVATE_NETWORKS'],
        // Trusting every sender (or a hop count) would let a client pick its own address.
        [{ TRUST_PROXY: 'true' }, 'TRUST_PROXY'],
        [{ TRUST_PROXY: '10.0.0.0/33' }, 'TRUST_PROXY'],
        [{ STATIC_BASE_URL: 'http://' }, 'STATIC_BASE_URL'],
        [{ STATIC_BASE_URL: 'http://a b/static' }, 'STATIC_BASE_URL'],
        // A secret read from a file with its newline: no client could ever send it.
        [{ METRICS_TOKEN: 'metrics-secret-1\n' }, 'METRICS_TOKEN']
      ]
      const dir = dataDir()
      // Four at a time: a start costs about a second of CPU, and this machine may have two cores.
      const results: Array<Awaited<ReturnType<typeof runCli>>> = []
      for (let i = 0; i < cases.length; i += 4) {
        results.push(...await Promise.all(cases.slice(i, i + 4).map(([env]) => runCli(['serve'], { DATA_DIR: dir, ...env }, 10_000))))
      }
      results.forEach((r, i) => {
        const name = cases[i]![1]
        assert.notEqual(r.code, 0, `${name}: exit code`)
        assert.equal(r.signal, null, `${name}: exited on its own, not killed by the test's timeout`)
        assert.match(r.stderr, new RegExp(`\\b${name}\\b`), `${name}: stderr was ${r.stderr}`)
        assert.doesNotMatch(r.stdout, /Server listening/, `${name}: must not start`)
      })
    })

    it('does not echo a rejected BOOTSTRAP_TOKEN (a secret) in its error message', async () => {
      // A secret read from a file often ends in a newline, which the token pattern rightly rejects.
      const secret = 'a-real-secret-token-value-0123456789'
      const r = await runCli(['serve'], { DATA_DIR: dataDir(), BOOTSTRAP_TOKEN: `${secret}\n` }, 10_000)
      assert.notEqual(r.code, 0)
      assert.match(r.stderr, /BOOTSTRAP_TOKEN/)
      assert.ok(!r.stderr.includes(secret) && !r.stdout.includes(secret), `the secret was printed: ${r.stderr}`)
    })

    it('when the port is taken on first start, exits non-zero and the generated token is not lost', async () => {
      const dir = dataDir()
      const blocker = net.createServer()
      await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve))
      try {
        const { port } = blocker.address() as AddressInfo
        const taken = await runCli(['serve'], { DATA_DIR: dir, PORT: String(port) }, 10_000)
        assert.notEqual(taken.code, 0)
        assert.match(taken.stderr, /EADDRINUSE|in use/i)
        const shown = /agt_[\w-]+/.test(taken.stdout)
        if (!shown) {
          // Nobody saw a token, so the next start must still offer one.
          const next = await serve({ DATA_DIR: dir })
          await until('a token to be offered on the next start', () => (next.stdout().includes('shown only this once') ? true : undefined), 5000)
        }
      } finally {
        await new Promise((resolve) => blocker.close(resolve))
      }
    })

    it('answers /healthz and /readyz without a token', async () => {
      const s = await serve({ DATA_DIR: dataDir(), BOOTSTRAP_TOKEN: BOOTSTRAP })
      for (const path of ['/healthz', '/readyz']) {
        const res = await call(`${s.url}${path}`)
        assert.equal(res.status, 200, `${path}: ${res.text}`)
        assert.deepEqual(res.body, { status: 200, data: { ok: true } })
        assert.match(res.headers.get('content-type') ?? '', /^application\/json/)
      }
    })

    it('logs JSON lines with request ids, echoes X-Request-Id, and never logs the token', async () => {
      const dir = dataDir()
      const { token } = await createToken(dir, 'acme')
      const wrongToken = 'agt_wrong-token-that-must-not-be-logged-0123456789'
      const s = await serve({ DATA_DIR: dir })

      const given = 'cli-test-req-42'
      const tagged = await call(`${s.url}${AGENTS}`, { headers: { ...bearer(token), 'x-request-id': given } })
      assert.equal(tagged.status, 200)
      assert.equal(tagged.headers.get('x-request-id'), given)

      const untagged = await call(`${s.url}${AGENTS}`, { headers: bearer(token) })
      const generated = untagged.headers.get('x-request-id') ?? ''
      assert.match(generated, UUID, 'without X-Request-Id the server makes one up')

      const unusable = await call(`${s.url}/healthz`, { headers: { 'x-request-id': 'has spaces; and {braces}' } })
      assert.notEqual(unusable.headers.get('x-request-id'), 'has spaces; and {braces}')
      assert.match(unusable.headers.get('x-request-id') ?? '', UUID)

      const refused = await call(`${s.url}${AGENTS}`, { headers: { ...bearer(wrongToken), 'x-request-id': 'cli-test-refused' } })
      assert.equal(refused.status, 401)
      assert.equal(refused.headers.get('x-request-id'), 'cli-test-refused')
      const bare = await call(`${s.url}${AGENTS}`, { headers: { authorization: token } })
      assert.equal(bare.status, 200)
      // One agent read twice, the second time from the read cache: both requests logged all the same.
      const created = await call(`${s.url}${AGENTS}`, { method: 'POST', headers: { ...bearer(token), 'content-type': 'application/json' }, body: JSON.stringify({ serviceUserId: 'logged-1', name: 'Logged' }) })
      const one = `${AGENTS}/${(created.body as { data: { id: string } }).data.id}`
      for (const reqId of ['cli-test-one-1', 'cli-test-one-2']) {
        assert.equal((await call(`${s.url}${one}`, { headers: { ...bearer(token), 'x-request-id': reqId } })).status, 200)
        await s.waitForLog((l) => l.reqId === reqId && l.msg === 'request completed')
      }

      // Request logs are written as the response finishes: wait (bounded) for the last one.
      await s.waitForLog((l) => l.reqId === 'cli-test-refused' && l.msg === 'request completed')
      await s.waitForLog((l) => l.reqId === generated && l.msg === 'request completed')
      const mine = s.logs().filter((l) => l.reqId === given)
      assert.ok(mine.some((l) => l.msg === 'incoming request' && (l.req as { url?: string }).url === AGENTS), JSON.stringify(mine))
      assert.ok(mine.some((l) => l.msg === 'request completed' && (l.res as { statusCode?: number }).statusCode === 200), JSON.stringify(mine))
      const refusedLines = s.logs().filter((l) => l.reqId === 'cli-test-refused')
      assert.ok(refusedLines.some((l) => l.msg === 'request refused' && l.code === 'unauthorized'), JSON.stringify(refusedLines))

      assert.equal(await s.stop(), 0)
      const stdout = s.stdout()
      for (const line of stdout.split('\n')) {
        if (line.trim() === '') continue
        assert.ok(line.startsWith('{'), `stdout line that is not JSON: ${line}`)
        const parsed = JSON.parse(line) as { level?: unknown, time?: unknown, msg?: unknown }
        assert.equal(typeof parsed.level, 'number')
        assert.equal(typeof parsed.time, 'number')
        assert.equal(typeof parsed.msg, 'string')
      }
      for (const l of s.logs().filter((x) => x.req !== undefined)) assert.equal(typeof l.reqId, 'string', 'every request log line has a request id')
      for (const secret of [token, wrongToken, token.slice(4, 24)]) {
        assert.ok(!stdout.includes(secret), `stdout contains ${secret}`)
        assert.ok(!s.stderr().includes(secret), `stderr contains ${secret}`)
      }
    })

    it('with LOG_LEVEL=warn, requests that go well write nothing, and a problem is still logged with its request id', async () => {
      const dir = dataDir()
      const s = await serve({ DATA_DIR: dir, BOOTSTRAP_TOKEN: BOOTSTRAP, LOG_LEVEL: 'warn' })
      for (let i = 0; i < 3; i++) assert.equal((await call(`${s.url}${AGENTS}`, { headers: bearer(BOOTSTRAP) })).status, 200)
      assert.equal((await call(`${s.url}/readyz`)).status, 200)

      // The avatar folder turned into a file: the store cannot take writes, so /readyz says not ready.
      const avatars = path.join(dir, 'avatars')
      fs.rmSync(avatars, { recursive: true, force: true })
      fs.writeFileSync(avatars, 'not a folder')
      const notReady = await call(`${s.url}/readyz`, { headers: { 'x-request-id': 'lazy-log-1' } })
      assert.equal(notReady.status, 503)
      const line = await s.waitForLog((l) => l.msg === 'not ready')
      assert.equal(line.reqId, 'lazy-log-1')
      assert.equal(line.level, 40)
      assert.deepEqual(s.logs().filter((l) => l.level < 40), [], 'nothing below warn is written')
    })

    describe('graceful shutdown', () => {
      let fixtures: FixtureServer
      before(async () => { fixtures = await startFixtureServer() })
      after(async () => { await fixtures.close() })

      /**
       * Starts a server, sends a request whose avatar download takes ~3 s (the fixture drips bytes every
       * 100 ms; AVATAR_TIMEOUT_MS cuts it off), SIGTERMs the server while the request is in flight and
       * checks that a new connection is turned away. Returns the in-flight request's reply and the exit.
       */
      async function sigtermDuringRequest (send: (url: string, init: { method: string, headers: Record<string, string>, body: string }) => Promise<Reply | string>, env: Record<string, string> = {}) {
        const hitsBefore = fixtures.hits.get('/slow.jpg') ?? 0
        const s = await serve({
          DATA_DIR: dataDir(),
          BOOTSTRAP_TOKEN: BOOTSTRAP,
          AVATAR_ALLOW_PRIVATE_NETWORKS: 'true',
          AVATAR_TIMEOUT_MS: '3000',
          ...env
        })
        const inFlight = send(`${s.url}${AGENTS}`, {
          method: 'POST',
          headers: { ...bearer(BOOTSTRAP), 'content-type': 'application/json', 'x-request-id': 'in-flight-1' },
          body: JSON.stringify({ serviceUserId: 'slow-1', name: 'Slow Avatar', avatar: `${fixtures.url}/slow.jpg` })
        })
        let settled = false
        void inFlight.then(() => { settled = true }, () => { settled = true })
        // Once the fixture is hit, the server is downloading the avatar, a few bytes every 100 ms.
        await until('the server to start downloading the avatar', () => (fixtures.hits.get('/slow.jpg') ?? 0) > hitsBefore ? true : undefined, 5_000)

        assert.ok(s.child.kill('SIGTERM'))
        const signalledAt = Date.now()
        await s.waitForLog((l) => /shutting down/.test(l.msg))
        assert.equal(settled, false, 'the request was still in flight when shutdown began')

        const newcomer = await oneShot(`${s.url}/healthz`, {}, 3_000)
        if (typeof newcomer === 'string') assert.equal(newcomer, 'ECONNREFUSED', 'a new connection after SIGTERM')
        else assert.equal(newcomer.status, 503, `a new connection after SIGTERM got ${newcomer.status} ${newcomer.text}`)
        assert.equal(settled, false, 'the request was still in flight after the new connection was turned away')

        const res = await inFlight
        if (typeof res === 'string') assert.fail(`the in-flight request failed: ${res}`)
        assert.ok(res.status === 200 || res.status === 422, `in-flight request: ${res.status} ${res.text}`)
        assert.equal(typeof res.body, 'object', `not a JSON envelope: ${res.text}`)
        assert.equal(res.body.status, res.status)
        if (res.status === 200) assert.equal(res.body.data.serviceUserId, 'slow-1')
        else assert.match(res.body.error.code, /^avatar_/)
        assert.equal(res.headers.get('x-request-id'), 'in-flight-1')
        return { s, res, signalledAt, answeredAt: Date.now() }
      }

      it('SIGTERM finishes the in-flight request, turns new connections away, then exits 0', async () => {
        const { s, signalledAt } = await sigtermDuringRequest((url, init) => oneShot(url, init, 15_000))
        const code = await s.exited(5_000)
        assert.equal(code, 0, `exit code; stderr: ${s.stderr()}`)
        assert.ok(Date.now() - signalledAt < 8_000, 'exited soon after the in-flight request')
        assert.ok(s.logs().some((l) => l.msg === 'stopped'), 'logs that it stopped')
        assert.ok(s.logs().some((l) => l.reqId === 'in-flight-1' && l.msg === 'request completed'), 'the in-flight request was logged as completed')
      })

      it('exits 0 soon after the in-flight request even when its client keeps the connection alive', async () => {
        // fetch keeps its connection alive for reuse, as browsers, proxies and load balancers do.
        // A shorter download deadline and a shutdown deadline well past it: the request always gets its answer.
        const { s, answeredAt } = await sigtermDuringRequest((url, init) => call(url, { ...init, signal: AbortSignal.timeout(15_000) }),
          { AVATAR_TIMEOUT_MS: '1000', SHUTDOWN_TIMEOUT_MS: '2500' })
        const code = await s.exited(5_000)
        assert.equal(code, 0, `exit code; stderr: ${s.stderr()}`)
        assert.ok(Date.now() - answeredAt < 1_500, `exited ${Date.now() - answeredAt} ms after the in-flight answer`)
      })

      it('a create cut off by the shutdown timeout leaves its Idempotency-Key free for the retry', async () => {
        const dir = dataDir()
        const env = { DATA_DIR: dir, BOOTSTRAP_TOKEN: BOOTSTRAP, AVATAR_ALLOW_PRIVATE_NETWORKS: 'true' }
        const hitsBefore = fixtures.hits.get('/slow.jpg') ?? 0
        // The download outlasts the shutdown timeout: the process exits under the request.
        const s = await serve({ ...env, AVATAR_TIMEOUT_MS: '20000', SHUTDOWN_TIMEOUT_MS: '1500' })
        const init = {
          method: 'POST',
          headers: { ...bearer(BOOTSTRAP), 'content-type': 'application/json', 'idempotency-key': 'key-cut-off' },
          body: JSON.stringify({ serviceUserId: 'cut-off-1', name: 'Cut Off', avatar: `${fixtures.url}/slow.jpg` })
        }
        const cutOff = oneShot(`${s.url}${AGENTS}`, init, 15_000)
        await until('the server to start downloading the avatar', () => (fixtures.hits.get('/slow.jpg') ?? 0) > hitsBefore ? true : undefined, 5_000)
        assert.ok(s.child.kill('SIGTERM'))
        await s.exited(10_000)
        assert.equal(typeof await cutOff, 'string', 'the request got no answer')

        // Its client retries, on the next instance (here the same one, started again): the create
        // runs again (and fails on the slow avatar), instead of 409 idempotency_key_in_progress
        // for twice AVATAR_TIMEOUT_MS + 2 minutes.
        const next = await serve({ ...env, AVATAR_TIMEOUT_MS: '1000' })
        const retried = await call(`${next.url}${AGENTS}`, init)
        assert.equal(retried.status, 422, retried.text)
        assert.equal(retried.body.error.code, 'avatar_timeout')
      })
    })
  })

  describe('migrate', () => {
    it('applies the schema, and says so; a second run says it is already up to date', async () => {
      const dir = dataDir()
      const first = await runCli(['migrate'], { DATA_DIR: dir })
      assert.equal(first.code, 0, first.stderr)
      assert.match(first.stdout, /applied: .*001_initial/i)

      const second = await runCli(['migrate'], { DATA_DIR: dir })
      assert.equal(second.code, 0, second.stderr)
      assert.match(second.stdout, /already up to date/i)
      assert.doesNotMatch(second.stdout, /applied/i)
    })

    it('a database a newer version migrated: an older one starts, warns and migrates nothing (a rolling upgrade, a roll back)', async () => {
      const dir = dataDir()
      assert.equal((await runCli(['migrate'], { DATA_DIR: dir })).code, 0)
      const db = new SQLite(path.join(dir, 'agentry.db'))
      try {
        db.prepare('insert into kysely_migration (name, timestamp) values (?, ?)').run('999_from_a_newer_version', new Date().toISOString())
      } finally {
        db.close()
      }
      const again = await runCli(['migrate'], { DATA_DIR: dir })
      assert.equal(again.code, 0, again.stderr)
      assert.match(again.stderr, /schema is newer than this version of Agentry: it has 999_from_a_newer_version/)
      const listed = await runCli(['tokens', 'list'], { DATA_DIR: dir })
      assert.equal(listed.code, 0, listed.stderr)
      const down = await runCli(['migrate', '--down'], { DATA_DIR: dataDir() })
      assert.equal(down.code, 0, down.stderr)
      assert.match(down.stdout, /Nothing to undo/)
    })

    it('a process opening a new SQLite file while another still sets it up waits for it', async () => {
      const dir = dataDir()
      // The other process is this one: the new file still in SQLite's default journal mode, with a
      // write under way, as while the first process to open a file switches it to WAL. Switching
      // needs the file to itself, and SQLite says SQLITE_BUSY at once rather than wait.
      const other = new SQLite(path.join(dir, 'agentry.db'))
      let ended = false
      let migrated: Promise<CliResult> | undefined
      try {
        other.exec('create table setting_up (x)')
        other.exec('BEGIN IMMEDIATE')
        other.exec('insert into setting_up values (1)')
        migrated = runCli(['migrate'], { DATA_DIR: dir }, 30_000).finally(() => { ended = true })
        await new Promise((resolve) => setTimeout(resolve, 1500))
        assert.equal(ended, false, 'it waits for the file')
      } finally {
        other.exec('COMMIT')
        other.close()
      }
      const r = await migrated
      assert.equal(r.code, 0, r.stdout + r.stderr)
      assert.match(r.stdout, /applied: .*001_initial/i)
    })

    it('two processes migrating a new SQLite file at once: the second waits for the first, then finds nothing to do', async () => {
      const dir = dataDir()
      // The first process is this one, through the service's own dialect, held after its first
      // migration: the moment a slow disk would stretch.
      const database = await openDatabase({ kind: 'sqlite', file: path.join(dir, 'agentry.db') })
      try {
        let release = (): void => {}
        const gate = new Promise<void>((resolve) => { release = resolve })
        let reached = (): void => {}
        const held = new Promise<void>((resolve) => { reached = resolve })
        const all = Object.entries(migrations('sqlite'))
        const gated: Record<string, Migration> = Object.fromEntries(all.map(([name, m], i) => [name, i > 0 ? m : {
          up: async (db) => {
            await m.up(db)
            reached()
            await gate
          }
        }]))
        const first = new Migrator({ db: database.db, provider: { getMigrations: async () => await Promise.resolve(gated) } }).migrateToLatest()
        await held
        let ended = false
        const second = runCli(['migrate'], { DATA_DIR: dir }, 30_000).finally(() => { ended = true })
        await new Promise((resolve) => setTimeout(resolve, 2000))
        assert.equal(ended, false, 'the second process waits for the first one\'s migrations')
        release()
        const done = await first
        assert.equal(done.error, undefined)
        assert.deepEqual(done.results?.map((r) => r.status), all.map(() => 'Success'))
        const r = await second
        assert.equal(r.code, 0, r.stdout + r.stderr)
        assert.match(r.stdout, /already up to date/i)
      } finally {
        await database.close()
      }
    })
  })
})
