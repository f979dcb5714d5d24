/** Reading V8 .cpuprofile files (from `node --cpu-prof`): the shared part of the summary and the flame graph. */

export interface CallFrame { functionName: string, url: string, lineNumber: number }
export interface ProfileNode { id: number, callFrame: CallFrame, hitCount?: number, children?: number[] }
export interface Profile { nodes: ProfileNode[], samples: number[], timeDeltas: number[], startTime: number, endTime: number }

/** Where a frame's code lives: a package, `node core`, `native`, a V8 pseudo-frame, or `agentry <file>`. */
export function whereOf (f: CallFrame): string {
  const url = f.url.replace(/^file:\/\//, '')
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (nm !== null) return nm[1] as string
  if (url.startsWith('node:')) return 'node core'
  if (url === '') return f.functionName.startsWith('(') ? f.functionName : 'native'
  const own = /\/(dist|src)\/(.*)$/.exec(url)
  return own === null ? url : `agentry ${own[2] ?? ''}`
}

export function labelOf (f: CallFrame): string {
  return `${f.functionName === '' ? '(anonymous)' : f.functionName} ${whereOf(f)}:${f.lineNumber + 1}`
}

/** Whether a frame is the function, package or file `match` names (a substring of its label or URL). */
export function frameMatches (f: CallFrame, match: string): boolean {
  return labelOf(f).includes(match) || f.url.includes(match)
}

/**
 * Every sample as its stack (leaf first) and the time it stands for, in ms. `(idle)` samples are
 * kept: callers decide whether time waiting counts.
 */
export function samplesOf (profile: Profile): Array<{ stack: ProfileNode[], ms: number }> {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const parent = new Map<number, number>()
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
  const stacks = new Map<number, ProfileNode[]>()
  const stackOf = (id: number): ProfileNode[] => {
    let stack = stacks.get(id)
    if (stack === undefined) {
      stack = []
      for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
        const node = byId.get(cur)
        if (node !== undefined) stack.push(node)
      }
      stacks.set(id, stack)
    }
    return stack
  }
  return profile.samples.map((id, i) => ({ stack: stackOf(id), ms: (profile.timeDeltas[i] ?? 0) / 1000 }))
}
