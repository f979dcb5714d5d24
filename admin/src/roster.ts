import type { Agent, ListAgentsQuery } from './client.js'
import { h } from './dom.js'

export type RowAction = 'status' | 'active' | 'edit' | 'delete'

/** The list filters the console offers, as the API takes them. */
export type Filters = Pick<ListAgentsQuery, 'q' | 'status' | 'active'>

/** Case- and accent-insensitive enough to decide whether a live-created agent belongs in the filtered table. */
function fold (text: string): string {
  return text.normalize('NFKD').replace(/\p{M}/gu, '').toLowerCase()
}

export function matches (agent: Agent, filters: Filters): boolean {
  if (filters.status !== undefined && agent.status !== filters.status) return false
  if (filters.active !== undefined && agent.active !== filters.active) return false
  if (filters.q !== undefined && !fold(agent.name).includes(fold(filters.q))) return false
  return true
}

function initials (name: string): string {
  const letters = name.trim().split(/\s+/).slice(0, 2).map((w) => [...w][0] ?? '')
  return letters.join('').toUpperCase() || '?'
}

function placeholder (name: string): HTMLElement {
  return h('span', { class: 'thumb thumb-empty', 'aria-hidden': 'true' }, initials(name))
}

function thumbnail (agent: Agent): HTMLElement {
  if (agent.avatar === null) return placeholder(agent.name)
  const img = h('img', { class: 'thumb', src: agent.avatar.url['120x120'], alt: '', width: 40, height: 40, decoding: 'async' })
  img.addEventListener('error', () => { img.replaceWith(placeholder(agent.name)) }, { once: true })
  return img
}

/** A button whose accessible name says which agent it acts on, while showing only the verb. */
function actionButton (action: RowAction, label: string, name: string, busy: boolean, extraClass = ''): HTMLButtonElement {
  return h('button', { type: 'button', class: `small ${extraClass}`.trim(), 'data-action': action, 'aria-disabled': busy ? 'true' : null },
    label, h('span', { class: 'visually-hidden' }, ` ${name}`))
}

function renderRow (agent: Agent, busy: boolean): HTMLTableRowElement {
  const online = agent.status === 'online'
  return h('tr', { 'data-id': agent.id, 'data-status': agent.status, 'data-active': String(agent.active), 'aria-busy': busy ? 'true' : null },
    h('td', { class: 'cell-avatar' }, thumbnail(agent)),
    h('th', { scope: 'row', class: 'cell-name' }, agent.name),
    h('td', { class: 'cell-suid', 'data-label': 'Service user id' }, h('code', {}, agent.serviceUserId)),
    h('td', { class: 'cell-status', 'data-label': 'Status' },
      h('span', { class: 'presence', 'data-status': agent.status },
        h('span', { class: 'dot', 'aria-hidden': 'true' }), online ? 'Online' : 'Offline')),
    h('td', { class: 'cell-active', 'data-label': 'Active' },
      h('span', { class: `badge ${agent.active ? 'badge-on' : 'badge-off'}` }, agent.active ? 'Active' : 'Inactive')),
    h('td', { class: 'cell-actions' },
      h('div', { class: 'actions' },
        actionButton('status', online ? 'Set offline' : 'Set online', agent.name, busy),
        actionButton('active', agent.active ? 'Deactivate' : 'Activate', agent.name, busy),
        actionButton('edit', 'Edit', agent.name, busy),
        actionButton('delete', 'Delete', agent.name, busy, 'danger')))
  )
}

/** The agents on screen, newest first, keyed by id; rows are redrawn one at a time as agents change. */
export class Roster {
  private readonly agents = new Map<string, Agent>()
  private readonly busy = new Set<string>()

  constructor (private readonly tbody: HTMLTableSectionElement) {}

  get size (): number {
    return this.agents.size
  }

  get (id: string): Agent | undefined {
    return this.agents.get(id)
  }

  clear (): void {
    this.agents.clear()
    this.busy.clear()
    this.tbody.replaceChildren()
  }

  /** Adds a page at the end; agents already shown (created live meanwhile) are refreshed instead. */
  append (agents: Agent[]): void {
    for (const agent of agents) {
      if (this.agents.has(agent.id)) this.update(agent)
      else {
        this.agents.set(agent.id, agent)
        this.tbody.append(renderRow(agent, false))
      }
    }
  }

  prepend (agent: Agent): void {
    if (this.agents.has(agent.id)) { this.update(agent); return }
    this.agents.set(agent.id, agent)
    const row = renderRow(agent, false)
    row.classList.add('appeared')
    this.tbody.prepend(row)
  }

  /** Redraws the agent's row if it is shown, keeping keyboard focus on the same button. */
  update (agent: Agent): void {
    const before = this.agents.get(agent.id)
    const old = this.row(agent.id)
    if (before === undefined || old === undefined) return
    this.agents.set(agent.id, agent)
    const row = renderRow(agent, this.busy.has(agent.id))
    if (before.status !== agent.status) row.querySelector('.presence')?.classList.add('changed')
    const focused = document.activeElement instanceof HTMLElement && old.contains(document.activeElement)
      ? document.activeElement.closest<HTMLElement>('[data-action]')?.dataset.action
      : undefined
    old.replaceWith(row)
    if (focused !== undefined) row.querySelector<HTMLElement>(`[data-action="${focused}"]`)?.focus()
  }

  remove (id: string): void {
    this.agents.delete(id)
    this.busy.delete(id)
    this.row(id)?.remove()
  }

  isBusy (id: string): boolean {
    return this.busy.has(id)
  }

  setBusy (id: string, busy: boolean): void {
    if (busy) this.busy.add(id)
    else this.busy.delete(id)
    const row = this.row(id)
    if (row === undefined) return
    if (busy) row.setAttribute('aria-busy', 'true')
    else row.removeAttribute('aria-busy')
    // aria-disabled rather than disabled: a disabled button would drop the keyboard focus.
    for (const button of row.querySelectorAll('button')) {
      if (busy) button.setAttribute('aria-disabled', 'true')
      else button.removeAttribute('aria-disabled')
    }
  }

  private row (id: string): HTMLTableRowElement | undefined {
    for (const row of this.tbody.rows) if (row.dataset.id === id) return row
    return undefined
  }
}
