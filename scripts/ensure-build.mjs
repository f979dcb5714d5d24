// Builds dist/ when it is missing or older than any source file, so `npm start` and `npx agentry`
// work straight after a clone. tsc's incremental build makes an up-to-date check cheap.
import { execFileSync } from 'node:child_process'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'

function newest (dir) {
  let latest = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name)
    latest = Math.max(latest, entry.isDirectory() ? newest(p) : statSync(p).mtimeMs)
  }
  return latest
}

const built = 'dist/cli/index.js'
const stale = !existsSync(built) || newest('src') > statSync(built).mtimeMs ||
  statSync('package.json').mtimeMs > statSync(built).mtimeMs
if (stale) {
  console.error('Building (tsc)…')
  execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.build.json'], { stdio: 'inherit' })
}
