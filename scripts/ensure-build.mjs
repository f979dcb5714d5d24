// Builds dist/ when it is missing or older than any source or build setting, so `npm start` and
// `npx agentry` work straight after a clone. A stamp written after each build records when dist/
// was last brought up to date (tsc's incremental build leaves unchanged outputs untouched).
import { execFileSync } from 'node:child_process'
import { existsSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

function newest (dir) {
  let latest = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name)
    latest = Math.max(latest, entry.isDirectory() ? newest(p) : statSync(p).mtimeMs)
  }
  return latest
}

const stamp = 'dist/.build-stamp'
// The admin console (admin/, compiled by admin/tsconfig.json into dist/admin) builds after the
// service, since it reads the typed client's declarations from dist/client.
const inputs = Math.max(newest('src'), newest('admin'), ...['package.json', 'tsconfig.json', 'tsconfig.build.json'].map((f) => statSync(f).mtimeMs))
/** The .js file tsc makes of each .ts source under dir (declarations aside). */
function outputsOf (dir, outDir) {
  return readdirSync(dir, { recursive: true })
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))
    .map((f) => join(outDir, f.replace(/\.ts$/, '.js')))
}
const outputs = [...outputsOf('src', 'dist'), ...outputsOf('admin/src', 'dist/admin')]
const missing = outputs.some((f) => !existsSync(f))
if (!existsSync(stamp) || missing || inputs > statSync(stamp).mtimeMs) {
  // tsc's incremental build info still lists a deleted output as up to date and would not make it
  // again: without it, tsc compiles everything.
  if (missing) for (const info of ['dist/.tsbuildinfo', 'dist/admin/.tsbuildinfo']) rmSync(info, { force: true })
  console.error('Building (tsc)…')
  for (const project of ['tsconfig.build.json', 'admin/tsconfig.json']) {
    execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', project], { stdio: 'inherit' })
  }
  writeFileSync(stamp, `${new Date().toISOString()}\n`)
}
