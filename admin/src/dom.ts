/** Small DOM helpers. Text always goes in as text (never as HTML), so nothing the API returns can run. */

type Child = Node | string | null | undefined | false
type Attrs = Record<string, string | number | boolean | null | undefined>

/** Creates an element with attributes (false/null/undefined leave one out, true sets it empty) and children. */
export function h<K extends keyof HTMLElementTagNameMap> (tag: K, attrs: Attrs = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag)
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue
    el.setAttribute(name, value === true ? '' : String(value))
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) el.append(child)
  }
  return el
}

/** The element with this id, checked to be of the expected kind: a missing one is a bug in index.html. */
export function byId<T extends HTMLElement> (id: string, kind: new () => T): T {
  const el = document.getElementById(id)
  if (!(el instanceof kind)) throw new Error(`admin: #${id} is missing or not a ${kind.name}`)
  return el
}

export function show (el: HTMLElement, visible: boolean): void {
  el.hidden = !visible
}

/** Calls fn once things have been quiet for ms. */
export function debounce<A extends unknown[]> (fn: (...args: A) => void, ms: number): (...args: A) => void {
  let timer: ReturnType<typeof setTimeout> | undefined
  return (...args: A) => {
    clearTimeout(timer)
    timer = setTimeout(() => { fn(...args) }, ms)
  }
}
