/**
 * Summarises a V8 .cpuprofile (from `npm run bench -- --cpu-prof`): where the service's CPU time
 * went, by function (self and total time) and by package; and draws it as a flame graph, an SVG
 * written beside the profile (`<profile>.flame.svg`).
 *
 *   npx tsx bench/profile-summary.ts bench/results/profiles/sqlite/CPU....cpuprofile [top=30] [match]
 *
 * With `match`, only samples whose stack contains a function or file matching it are counted
 * (e.g. `getAgentRoute` or `agents/service`), to see what one code path costs.
 */
import fs from 'node:fs'
import { flameGraph } from './lib/flame.js'
import { frameMatches, labelOf as label, samplesOf, whereOf as where, type Profile } from './lib/cpuprofile.js'

const [file, topArg, match] = process.argv.slice(2)
if (file === undefined) {
  process.stderr.write('usage: tsx bench/profile-summary.ts <file.cpuprofile> [top] [match]\n')
  process.exit(2)
}
// Piped into head: stop quietly when the reader goes away.
process.stdout.on('error', () => process.exit(0))
const top = Number(topArg ?? 30)
const profile = JSON.parse(fs.readFileSync(file, 'utf8')) as Profile

const self = new Map<string, number>()
const total = new Map<string, number>()
const pkg = new Map<string, number>()
let counted = 0
let all = 0
for (const { stack, ms: dt } of samplesOf(profile)) {
  all += dt
  const leaf = stack[0]
  if (leaf === undefined) continue
  if (match !== undefined && !stack.some((n) => frameMatches(n.callFrame, match))) continue
  counted += dt
  self.set(label(leaf.callFrame), (self.get(label(leaf.callFrame)) ?? 0) + dt)
  pkg.set(where(leaf.callFrame), (pkg.get(where(leaf.callFrame)) ?? 0) + dt)
  for (const l of new Set(stack.map((n) => label(n.callFrame)))) total.set(l, (total.get(l) ?? 0) + dt)
}

const print = (title: string, m: Map<string, number>, n: number) => {
  process.stdout.write(`\n${title}\n`)
  for (const [k, v] of [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, n)) {
    process.stdout.write(`  ${v.toFixed(0).padStart(7)} ms ${(100 * v / counted).toFixed(1).padStart(5)}%  ${k}\n`)
  }
}
process.stdout.write(`${file}: ${all.toFixed(0)} ms sampled${match === undefined ? '' : `, ${counted.toFixed(0)} ms with "${match}" on the stack`}\n`)
print('self time by package', pkg, top)
print('self time by function', self, top)
print('total time by function (self + callees)', total, top)

// And the flame graph of the same samples, beside the profile.
const svgFile = `${file.replace(/\.cpuprofile$/, '')}${match === undefined ? '' : `.${match.replace(/[^\w.-]+/g, '_')}`}.flame.svg`
const { svg } = flameGraph(profile, { title: `CPU profile: ${file.split('/').pop() ?? file}`, subtitle: match === undefined ? undefined : `samples with "${match}" on the stack`, match })
fs.writeFileSync(svgFile, svg)
process.stdout.write(`\nflame graph: ${svgFile}\n`)
