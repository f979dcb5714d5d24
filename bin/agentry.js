#!/usr/bin/env node
import { existsSync } from 'node:fs'

const entry = new URL('../dist/cli/index.js', import.meta.url)
if (!existsSync(entry)) {
  console.error('agentry: not built yet; run `npm run build` (npm start does it for you).')
  process.exit(1)
}
const { run } = await import(entry.href)
await run(process.argv.slice(2))
