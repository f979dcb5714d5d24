/**
 * Summarises a V8 .cpuprofile (from `npm run bench -- --cpu-prof`): where the service's CPU time
 * went, by function (self and total time) and by package.
 *
 *   npx tsx bench/profile-summary.ts bench/results/profiles/sqlite/CPU....cpuprofile [top=30] [match]
 *
 * With `match`, only samples whose stack contains a function or file matching it are counted
 * (e.g. `getAgentRoute` or `agents/service`), to see what one code path costs.
 */
import fs from 'node:fs'

interface CallFrame { functionName: string, url: string, lineNumber: number }
interface ProfileNode { id: number, callFrame: CallFrame, hitCount?: number, children?: number[] }
interface Profile { nodes: ProfileNode[], samples: number[], timeDeltas: number[], startTime: number, endTime: number }

const [file, topArg, match] = process.argv.slice(2)
if (file === undefined) {
  process.stderr.write('usage: tsx bench/profile-summary.ts <file.cpuprofile> [top] [match]\n')
  process.exit(2)
}
// Piped into head: stop quietly when the reader goes away.
process.stdout.on('error', () => process.exit(0))
const top = Number(topArg ?? 30)
const profile = JSON.parse(fs.readFileSync(file, 'utf8')) as Profile
const byId = new Map(profile.nodes.map((n) => [n.id, n]))
const parent = new Map<number, number>()
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)

const where = (f: CallFrame) => {
  const url = f.url.replace(/^file:\/\//, '')
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (nm !== null) return nm[1] as string
  if (url.startsWith('node:')) return 'node core'
  if (url === '') return f.functionName.startsWith('(') ? f.functionName : 'native'
  const own = /\/(dist|src)\/(.*)$/.exec(url)
  return own === null ? url : `agentry ${own[2] ?? ''}`
}
const label = (f: CallFrame) => `${f.functionName === '' ? '(anonymous)' : f.functionName} ${where(f)}:${f.lineNumber + 1}`

const stackOf = (id: number): ProfileNode[] => {
  const out: ProfileNode[] = []
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
    const node = byId.get(cur)
    if (node !== undefined) out.push(node)
  }
  return out
}

const self = new Map<string, number>()
const total = new Map<string, number>()
const pkg = new Map<string, number>()
let counted = 0
let all = 0
profile.samples.forEach((id, i) => {
  const dt = (profile.timeDeltas[i] ?? 0) / 1000
  all += dt
  const stack = stackOf(id)
  const leaf = stack[0]
  if (leaf === undefined) return
  if (match !== undefined && !stack.some((n) => label(n.callFrame).includes(match) || n.callFrame.url.includes(match))) return
  counted += dt
  self.set(label(leaf.callFrame), (self.get(label(leaf.callFrame)) ?? 0) + dt)
  pkg.set(where(leaf.callFrame), (pkg.get(where(leaf.callFrame)) ?? 0) + dt)
  for (const l of new Set(stack.map((n) => label(n.callFrame)))) total.set(l, (total.get(l) ?? 0) + dt)
})

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
