// Builds dist/ when it is missing or older than any source or build setting, so `npm start` and
// `npx agentry` work straight after a clone. A stamp written after each build records when dist/
// was last brought up to date (tsc's incremental build leaves unchanged outputs untouched).
import { execFileSync } from 'node:child_process'
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs'
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
const outputs = ['dist/cli/index.js', 'dist/client/index.js', 'dist/admin/main.js']
if (!existsSync(stamp) || !outputs.every((f) => existsSync(f)) || inputs > statSync(stamp).mtimeMs) {
  console.error('Building (tsc)…')
  for (const project of ['tsconfig.build.json', 'admin/tsconfig.json']) {
    execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', project], { stdio: 'inherit' })
  }
  writeFileSync(stamp, `${new Date().toISOString()}\n`)
}
