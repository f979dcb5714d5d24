#!/usr/bin/env -S node --max-semi-space-size=8 --single-threaded-gc --heap-growing-percent=50
// The flags above are measured choices for a small server (README, "Performance notes"): young-generation
// semi-spaces of 8 MB instead of V8's 16 MB, garbage collection on the main thread only, and the heap
// grown by 50% after a full collection rather than by V8's own factor (up to 4x). `npm start`
// passes the same flags; run `node <flags> bin/agentry.js` where `env -S` is missing (BusyBox).
import { existsSync } from 'node:fs'

const entry = new URL('../dist/cli/index.js', import.meta.url)
if (!existsSync(entry)) {
  console.error('agentry: not built yet; run `npm run build` (npm start does it for you).')
  process.exit(1)
}
const { run } = await import(entry.href)
await run(process.argv.slice(2))
