/**
 * A flame graph of a V8 .cpuprofile as a static SVG: one box per function on a path from the root,
 * as wide as the time spent in it and below it, callers under callees, hover for the figures. No
 * library here does this from a .cpuprofile without a browser (speedscope and d3-flame-graph draw in
 * one; 0x and flamebearer read `--prof` logs), and the bench already draws its own SVG charts.
 */
import { frameMatches, labelOf, samplesOf, whereOf, type CallFrame, type Profile } from './cpuprofile.js'
import { esc } from './svg.js'

interface Frame {
  label: string
  where: string
  ms: number
  children: Map<string, Frame>
}

/** Agentry's own code green, Node's and V8's blue-grey, packages warm: what is ours stands out. */
function colorOf (where: string, label: string): string {
  let h = 0
  for (const c of label) h = (h * 31 + c.charCodeAt(0)) >>> 0
  const jitter = h % 30
  if (where.startsWith('agentry')) return `hsl(${100 + (jitter % 40)}, 55%, ${55 + (h % 15)}%)`
  if (where === 'node core' || where === 'native' || where.startsWith('(')) return `hsl(${200 + jitter}, 25%, ${62 + (h % 15)}%)`
  return `hsl(${10 + jitter}, 75%, ${58 + (h % 15)}%)`
}

export interface FlameOptions {
  title: string
  subtitle?: string
  /** Only samples with a frame matching this (function, package or file) on their stack. */
  match?: string
  width?: number
}

/** The SVG, and how many ms of non-idle samples it shows. */
export function flameGraph (profile: Profile, options: FlameOptions): { svg: string, ms: number } {
  const width = options.width ?? 1200
  const rowHeight = 17
  const root: Frame = { label: 'all', where: '', ms: 0, children: new Map() }
  for (const { stack, ms } of samplesOf(profile)) {
    const leaf = stack[0]
    // Waiting is not work: idle samples are left out, as are the root's own.
    if (leaf === undefined || leaf.callFrame.functionName === '(idle)' || leaf.callFrame.functionName === '(root)') continue
    const match = options.match
    if (match !== undefined && !stack.some((n) => frameMatches(n.callFrame, match))) continue
    root.ms += ms
    let at = root
    for (let i = stack.length - 1; i >= 0; i--) {
      const f = (stack[i] as { callFrame: CallFrame }).callFrame
      if (f.functionName === '(root)') continue
      const label = labelOf(f)
      let child = at.children.get(label)
      if (child === undefined) {
        child = { label, where: whereOf(f), ms: 0, children: new Map() }
        at.children.set(label, child)
      }
      child.ms += ms
      at = child
    }
  }

  const scale = root.ms > 0 ? (width - 20) / root.ms : 0
  const boxes: Array<{ frame: Frame, x: number, w: number, level: number }> = []
  let depth = 0
  const place = (frame: Frame, x: number, level: number): void => {
    const w = frame.ms * scale
    if (w < 1) return
    depth = Math.max(depth, level)
    boxes.push({ frame, x, w, level })
    let cx = x
    // Alphabetical, as flame graphs are: the x axis is not time.
    for (const child of [...frame.children.values()].sort((a, b) => a.label.localeCompare(b.label))) {
      place(child, cx, level + 1)
      cx += child.ms * scale
    }
  }
  place(root, 10, 0)

  const top = options.subtitle === undefined ? 40 : 58
  const height = top + (depth + 1) * rowHeight + 24
  const parts: string[] = []
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="ui-monospace, SFMono-Regular, Menlo, Consolas, monospace" font-size="11">`)
  parts.push(`<rect width="${width}" height="${height}" fill="#fdfdfd"/>`)
  parts.push(`<text x="10" y="24" font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif" font-size="16" font-weight="600" fill="#111">${esc(options.title)}</text>`)
  if (options.subtitle !== undefined) parts.push(`<text x="10" y="44" font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif" font-size="12" fill="#555">${esc(options.subtitle)}</text>`)
  for (const { frame, x, w, level } of boxes) {
    // Callers at the bottom, callees above them.
    const y = height - 24 - (level + 1) * rowHeight
    const share = root.ms > 0 ? (100 * frame.ms / root.ms).toFixed(1) : '0'
    const fill = level === 0 ? '#d9d9d9' : colorOf(frame.where, frame.label)
    const chars = Math.floor((w - 6) / 6.6)
    const text = chars >= 3 ? (frame.label.length <= chars ? frame.label : `${frame.label.slice(0, chars - 1)}…`) : ''
    parts.push(`<g><title>${esc(`${frame.label}\n${frame.ms.toFixed(0)} ms, ${share}% of the samples shown`)}</title>` +
      `<rect x="${x.toFixed(2)}" y="${y}" width="${w.toFixed(2)}" height="${rowHeight - 1}" rx="2" fill="${fill}"/>` +
      (text === '' ? '' : `<text x="${(x + 3).toFixed(2)}" y="${y + 12}" fill="#111">${esc(text)}</text>`) + '</g>')
  }
  parts.push(`<text x="10" y="${height - 8}" font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif" font-size="11" fill="#555">${esc(`${root.ms.toFixed(0)} ms of samples (idle left out); width = time in a function and below it; green: Agentry, blue-grey: Node and V8, orange: packages`)}</text>`)
  parts.push('</svg>')
  return { svg: parts.join('\n'), ms: root.ms }
}
