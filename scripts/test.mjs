// Runs the integration suite once per store leg:
//   1. SQLite + local disk (always);
//   2. PostgreSQL + S3 when TEST_DATABASE_URL is set. The S3 side uses TEST_S3_ENDPOINT if given,
//      else an s3rver this script starts on loopback for the run.
// With CI=true or TEST_REQUIRE_ALL_LEGS=1, a missing TEST_DATABASE_URL fails the run instead of
// quietly skipping the second leg. Extra arguments are passed to `node --test` (e.g. test files).
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const args = process.argv.slice(2)
const files = args.filter((a) => !a.startsWith('-'))
const flags = args.filter((a) => a.startsWith('-'))
const testFiles = files.length > 0 ? files : readdirSync('test').filter((f) => f.endsWith('.test.ts')).sort().map((f) => join('test', f))
const requireAll = process.env.CI === 'true' || process.env.TEST_REQUIRE_ALL_LEGS === '1'

function freePort () {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)) })
    srv.on('error', reject)
  })
}

/** The parent environment with env applied; a key set to undefined is removed. */
function withEnv (env) {
  const out = { ...process.env, ...env }
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete out[k]
  return out
}

function runLeg (name, env) {
  const tap = join(mkdtempSync(join(tmpdir(), 'agentry-tap-')), 'report.tap')
  console.log(`\n=== store leg: ${name} ===\n`)
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [
      '--import', 'tsx', '--test', '--test-concurrency=1',
      '--test-reporter=spec', '--test-reporter-destination=stdout',
      '--test-reporter=tap', `--test-reporter-destination=${tap}`,
      ...flags, ...testFiles
    ], { stdio: 'inherit', env: withEnv(env) })
    child.on('exit', (code) => {
      const text = (() => { try { return readFileSync(tap, 'utf8') } catch { return '' } })()
      const count = (what) => [...text.matchAll(new RegExp(`^# ${what} (\\d+)$`, 'gm'))].reduce((n, m) => n + Number(m[1]), 0)
      rmSync(tap, { force: true })
      resolve({ name, code: code ?? 1, pass: count('pass'), fail: count('fail'), skipped: count('skipped') })
    })
  })
}

const legs = []
legs.push(await runLeg('sqlite+local', { TEST_DATABASE_URL: undefined, TEST_S3_ENDPOINT: undefined }))

if (process.env.TEST_DATABASE_URL) {
  let s3rver
  const s3Env = {}
  if (!process.env.TEST_S3_ENDPOINT) {
    const { default: S3rver } = await import('s3rver')
    const port = await freePort()
    const dir = mkdtempSync(join(tmpdir(), 'agentry-s3rver-'))
    s3rver = new S3rver({ address: '127.0.0.1', port, directory: dir, silent: true })
    await s3rver.run()
    s3Env.TEST_S3_ENDPOINT = `http://127.0.0.1:${port}`
    s3rver.dir = dir
  }
  legs.push(await runLeg('postgres+s3', {
    ...s3Env,
    AWS_ACCESS_KEY_ID: process.env.AWS_ACCESS_KEY_ID ?? 'S3RVER',
    AWS_SECRET_ACCESS_KEY: process.env.AWS_SECRET_ACCESS_KEY ?? 'S3RVER'
  }))
  if (s3rver) {
    await s3rver.close()
    rmSync(s3rver.dir, { recursive: true, force: true })
  }
} else if (requireAll) {
  console.error('\nThe postgres+s3 leg needs TEST_DATABASE_URL (e.g. postgres://root@127.0.0.1:5432/test); refusing to skip it in CI.')
  legs.push({ name: 'postgres+s3', code: 1, pass: 0, fail: 0, skipped: 0 })
} else {
  console.log('\n(postgres+s3 leg not run: set TEST_DATABASE_URL to run it)')
}

console.log('\n=== summary ===')
for (const l of legs) console.log(`${l.name}: ${l.pass} passed, ${l.fail} failed${l.code !== 0 ? ` (exit ${l.code})` : ''}`)
const total = legs.reduce((t, l) => ({ pass: t.pass + l.pass, fail: t.fail + l.fail }), { pass: 0, fail: 0 })
const failed = legs.some((l) => l.code !== 0) || total.fail > 0
console.log(`tests: ${total.pass} passed, ${failed && total.fail === 0 ? 1 : total.fail} failed`)
process.exit(failed ? 1 : 0)
