/** A small hand-built SVG line chart: log-scale x, linear y from zero, a legend, no dependencies. */

export interface Series {
  label: string
  color: string
  /** stroke-dasharray, e.g. "6 4" for a dashed line. */
  dash?: string
  points: Array<{ x: number, y: number }>
}

export interface ChartSpec {
  title: string
  subtitle?: string
  xLabel: string
  yLabel: string
  series: Series[]
  width?: number
  height?: number
}

/** Text made safe for SVG markup and attributes. */
export const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;')

/** 1, 2, 2.5 or 5 times a power of ten, at least v. */
function niceCeil (v: number): number {
  if (!(v > 0)) return 1
  const p = 10 ** Math.floor(Math.log10(v))
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p
  return 10 * p
}

function formatCount (n: number): string {
  if (n >= 1e6) return `${n / 1e6}M`
  if (n >= 1e3) return `${n / 1e3}k`
  return String(n)
}

const fmtY = (v: number) => (v === 0 ? '0' : v >= 10 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toFixed(2))

export function lineChart (spec: ChartSpec): string {
  const width = spec.width ?? 760
  const height = spec.height ?? 440
  const m = { top: 64, right: 200, bottom: 56, left: 70 }
  const pw = width - m.left - m.right
  const ph = height - m.top - m.bottom
  const all = spec.series.flatMap((s) => s.points).filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y) && p.x > 0)
  const xs = all.map((p) => p.x)
  const minX = Math.min(...xs, 1e3)
  const maxX = Math.max(...xs, 1e4)
  const lo = Math.floor(Math.log10(minX))
  const hi = Math.ceil(Math.log10(maxX))
  const yMax = niceCeil(Math.max(...all.map((p) => p.y), 0.1) * 1.1)
  const sx = (x: number) => m.left + (hi === lo ? 0 : (Math.log10(x) - lo) / (hi - lo)) * pw
  const sy = (y: number) => m.top + ph - (y / yMax) * ph

  const parts: string[] = []
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif" font-size="12">`)
  parts.push(`<rect width="${width}" height="${height}" fill="#ffffff"/>`)
  parts.push(`<text x="${m.left}" y="24" font-size="16" font-weight="600" fill="#111">${esc(spec.title)}</text>`)
  if (spec.subtitle !== undefined) parts.push(`<text x="${m.left}" y="44" fill="#555">${esc(spec.subtitle)}</text>`)

  // Grid and y ticks.
  const yTicks = 5
  for (let i = 0; i <= yTicks; i++) {
    const v = (yMax / yTicks) * i
    const y = sy(v)
    parts.push(`<line x1="${m.left}" y1="${y.toFixed(1)}" x2="${m.left + pw}" y2="${y.toFixed(1)}" stroke="${i === 0 ? '#333' : '#e3e3e3'}"/>`)
    parts.push(`<text x="${m.left - 8}" y="${(y + 4).toFixed(1)}" text-anchor="end" fill="#333">${fmtY(v)}</text>`)
  }
  // x ticks at powers of ten.
  for (let e = lo; e <= hi; e++) {
    const x = sx(10 ** e)
    parts.push(`<line x1="${x.toFixed(1)}" y1="${m.top}" x2="${x.toFixed(1)}" y2="${m.top + ph}" stroke="#e3e3e3"/>`)
    parts.push(`<text x="${x.toFixed(1)}" y="${m.top + ph + 18}" text-anchor="middle" fill="#333">${formatCount(10 ** e)}</text>`)
  }
  parts.push(`<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${m.top + ph}" stroke="#333"/>`)
  parts.push(`<text x="${m.left + pw / 2}" y="${height - 14}" text-anchor="middle" fill="#111">${esc(spec.xLabel)}</text>`)
  parts.push(`<text transform="translate(18 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle" fill="#111">${esc(spec.yLabel)}</text>`)

  // Series.
  spec.series.forEach((s, i) => {
    const pts = s.points.filter((p) => Number.isFinite(p.y) && p.x > 0).sort((a, b) => a.x - b.x)
    if (pts.length > 0) {
      const d = pts.map((p, k) => `${k === 0 ? 'M' : 'L'}${sx(p.x).toFixed(1)} ${sy(p.y).toFixed(1)}`).join(' ')
      parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2"${s.dash === undefined ? '' : ` stroke-dasharray="${s.dash}"`}/>`)
      for (const p of pts) {
        parts.push(`<circle cx="${sx(p.x).toFixed(1)}" cy="${sy(p.y).toFixed(1)}" r="3.5" fill="${s.color}"><title>${esc(`${s.label}: ${formatCount(p.x)} agents, ${p.y.toFixed(3)} ms`)}</title></circle>`)
      }
    }
    const ly = m.top + 8 + i * 20
    const lx = m.left + pw + 16
    parts.push(`<line x1="${lx}" y1="${ly}" x2="${lx + 28}" y2="${ly}" stroke="${s.color}" stroke-width="2"${s.dash === undefined ? '' : ` stroke-dasharray="${s.dash}"`}/>`)
    parts.push(`<text x="${lx + 36}" y="${ly + 4}" fill="#111">${esc(s.label)}</text>`)
  })
  parts.push('</svg>')
  return parts.join('\n') + '\n'
}
