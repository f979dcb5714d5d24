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
const inputs = Math.max(newest('src'), ...['package.json', 'tsconfig.json', 'tsconfig.build.json'].map((f) => statSync(f).mtimeMs))
if (!existsSync(stamp) || !existsSync('dist/cli/index.js') || inputs > statSync(stamp).mtimeMs) {
  console.error('Building (tsc)…')
  execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.build.json'], { stdio: 'inherit' })
  writeFileSync(stamp, `${new Date().toISOString()}\n`)
}
