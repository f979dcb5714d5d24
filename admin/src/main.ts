/**
 * The Agentry admin console. It is a client of the public API like any other: every call goes
 * through the typed client (agentry/client, served as ./client.js), with the token the person signs
 * in with. Nothing here reaches into the server.
 */
import { AgentryClient, AgentryError, type Agent, type AgentEvent } from './client.js'
import { AgentForm, type SaveRequest } from './agent-form.js'
import { byId, debounce, show } from './dom.js'
import { Roster, matches, type Filters, type RowAction } from './roster.js'
import { forgetToken, saveToken, savedToken } from './session.js'

const PAGE_SIZE = 25

type LiveState = 'connecting' | 'live' | 'reconnecting' | 'off'
const LIVE_TEXT: Record<LiveState, string> = { connecting: 'Connecting…', live: 'Live', reconnecting: 'Reconnecting…', off: 'Not live' }

const ui = {
  signin: byId('signin', HTMLElement),
  signinForm: byId('signin-form', HTMLFormElement),
  signinButton: byId('signin-button', HTMLButtonElement),
  token: byId('token', HTMLInputElement),
  tokenError: byId('token-error', HTMLParagraphElement),
  signOut: byId('sign-out', HTMLButtonElement),
  availability: byId('availability', HTMLParagraphElement),
  console: byId('console', HTMLElement),
  heading: byId('agents-title', HTMLHeadingElement),
  filters: byId('filters', HTMLFormElement),
  q: byId('filter-q', HTMLInputElement),
  status: byId('filter-status', HTMLSelectElement),
  active: byId('filter-active', HTMLSelectElement),
  live: byId('live', HTMLSpanElement),
  newAgent: byId('new-agent', HTMLButtonElement),
  notice: byId('notice', HTMLParagraphElement),
  rows: byId('agent-rows', HTMLTableSectionElement),
  table: byId('agents', HTMLTableElement),
  tableWrap: byId('table-wrap', HTMLDivElement),
  empty: byId('empty', HTMLParagraphElement),
  loadMore: byId('load-more', HTMLButtonElement),
  confirm: byId('confirm-dialog', HTMLDialogElement),
  confirmText: byId('confirm-text', HTMLParagraphElement)
}

/** One signed-in token: its client and its live event stream. */
interface Session {
  client: AgentryClient
  stream: AbortController
  /** Settles when the event stream is first up (or could not come up): the list loads after it. */
  streamUp: Promise<void>
  /** Whether the stream has delivered an event, so that the client resumes after it on reconnect. */
  sawEvent: boolean
  /** Whether the stream has been up before (a later "up" is a reconnection). */
  wasLive: boolean
}

let session: Session | undefined
let filters: Filters = {}
let nextCursor: string | null = null
/** Bumped by every reload and sign-out; answers to older requests are dropped. */
let generation = 0
/** List requests in flight; events that arrive meanwhile wait, then apply in order over the fresh rows. */
let loading = 0
let waiting: AgentEvent[] = []

const roster = new Roster(ui.rows)
const form = new AgentForm(save)

// --- the client -------------------------------------------------------------

/**
 * A client for this token. Its fetch is watched (the client's own `fetch` option) to tell when the
 * event stream is up, and to sign out when the token stops being accepted.
 */
function newSession (token: string): Session {
  const stream = new AbortController()
  let up = () => {}
  const streamUp = new Promise<void>((resolve) => {
    up = resolve
    setTimeout(resolve, 3000) // a stream that cannot connect must not hold the list back
  })
  const watched: typeof fetch = async (input, init) => {
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url
    const isStream = new URL(url).pathname.endsWith('/events')
    let res: Response
    try {
      res = await fetch(input, init)
    } catch (err) {
      if (isStream && !stream.signal.aborted) { setLive(s, 'reconnecting'); up() }
      throw err
    }
    if (res.status === 401 && session === s) signOut('This token is no longer accepted (it may have been revoked). Sign in again.')
    if (!isStream) return res
    if (!res.ok || res.body === null) { setLive(s, 'reconnecting'); up(); return res }
    setLive(s, 'live')
    up()
    // Back after a drop, without an event to resume from: what changed meanwhile was not seen.
    if (s.wasLive && !s.sawEvent && session === s) void reload()
    s.wasLive = true
    // The stream ending is the client's cue to reconnect; show that until it is back.
    const body = res.body.pipeThrough(new TransformStream<Uint8Array, Uint8Array>({ flush: () => { setLive(s, 'reconnecting') } }))
    return new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers })
  }
  const s: Session = { client: new AgentryClient({ baseUrl: location.origin, token, fetch: watched }), stream, streamUp, sawEvent: false, wasLive: false }
  return s
}

function setLive (s: Session, state: LiveState): void {
  if (session !== s || s.stream.signal.aborted) return
  ui.live.dataset.state = state
  ui.live.textContent = LIVE_TEXT[state]
  ui.live.title = state === 'live' ? 'Changes made anywhere appear here as they happen.' : 'Changes made elsewhere may not appear until the stream is back.'
}

// --- signing in and out -----------------------------------------------------

async function signIn (token: string): Promise<void> {
  const s = newSession(token)
  await s.client.listAgents({ limit: 1 })
  saveToken(token)
  start(s)
}

function start (s: Session): void {
  session = s
  show(ui.signin, false)
  show(ui.console, true)
  show(ui.signOut, true)
  ui.tokenError.textContent = ''
  show(ui.tokenError, false)
  setLive(s, 'connecting')
  s.client.subscribe(onEvent, { signal: s.stream.signal, onError: () => { setLive(s, 'reconnecting') } })
    .catch((err: unknown) => {
      setLive(s, 'off')
      if (session === s && !(err instanceof AgentryError && err.status === 401)) notify(`Live updates stopped: ${message(err)}`, 'error')
    })
  // The stream starts "now": listing after it is up means no change falls between the two.
  show(ui.empty, false)
  ui.table.setAttribute('aria-busy', 'true')
  void s.streamUp.then(() => { if (session === s) void reload() })
  refreshAvailability()
}

function signOut (reason?: string): void {
  const s = session
  session = undefined
  generation++
  s?.stream.abort()
  forgetToken()
  form.close()
  if (ui.confirm.open) ui.confirm.close()
  roster.clear()
  waiting = []
  nextCursor = null
  ui.live.dataset.state = 'off'
  ui.live.textContent = LIVE_TEXT.off
  ui.notice.textContent = ''
  show(ui.console, false)
  show(ui.signOut, false)
  show(ui.availability, false)
  show(ui.signin, true)
  ui.token.value = ''
  ui.tokenError.textContent = reason ?? ''
  show(ui.tokenError, reason !== undefined)
  ui.token.focus()
}

// --- the list -----------------------------------------------------------------

function readFilters (): Filters {
  const q = ui.q.value.trim()
  const status = ui.status.value
  const active = ui.active.value
  return {
    q: q === '' ? undefined : q,
    status: status === 'online' || status === 'offline' ? status : undefined,
    active: active === '' ? undefined : active === 'true'
  }
}

async function reload (): Promise<void> {
  filters = readFilters()
  generation++
  nextCursor = null
  roster.clear()
  updateListState()
  await loadPage(undefined)
}

async function loadPage (cursor: string | undefined): Promise<void> {
  const s = session
  if (s === undefined) return
  const gen = generation
  loading++
  ui.table.setAttribute('aria-busy', 'true')
  updateListState()
  try {
    const page = await s.client.listAgents({ ...filters, limit: PAGE_SIZE, cursor })
    if (gen !== generation) return
    roster.append(page.data)
    nextCursor = page.nextCursor
  } catch (err) {
    if (gen === generation && session === s) notify(`Could not load agents: ${message(err)}`, 'error')
  } finally {
    loading--
    if (loading === 0) {
      ui.table.removeAttribute('aria-busy')
      const events = waiting
      waiting = []
      for (const event of events) apply(event)
    }
    updateListState()
  }
}

function updateListState (): void {
  const busy = loading > 0
  show(ui.loadMore, nextCursor !== null)
  ui.loadMore.textContent = busy && nextCursor !== null ? 'Loading…' : 'Load more'
  ui.loadMore.setAttribute('aria-disabled', String(busy))
  const none = !busy && roster.size === 0
  const filtered = filters.q !== undefined || filters.status !== undefined || filters.active !== undefined
  ui.empty.textContent = filtered ? 'No agents match these filters.' : 'No agents yet. Create the first one with “New agent”.'
  show(ui.empty, none)
  show(ui.tableWrap, !none)
}

// --- live events --------------------------------------------------------------

function onEvent (event: AgentEvent): void {
  if (session !== undefined) session.sawEvent = true
  if (loading > 0) waiting.push(event)
  else apply(event)
  refreshAvailability()
}

function apply (event: AgentEvent): void {
  const agent = event.data.agent
  switch (event.type) {
    case 'agent.deleted':
      roster.remove(agent.id)
      break
    case 'agent.created':
      // Newest first: a new agent goes on top, when it belongs in the filtered list.
      if (roster.get(agent.id) !== undefined) roster.update(agent)
      else if (matches(agent, filters)) roster.prepend(agent)
      break
    default:
      roster.update(agent)
  }
  updateListState()
}

const refreshAvailability = debounce(() => {
  const s = session
  if (s === undefined) return
  s.client.availability().then(({ online }) => {
    if (session !== s) return
    ui.availability.textContent = `${online} online`
    ui.availability.title = 'Active agents online right now'
    show(ui.availability, true)
  }, () => { show(ui.availability, false) })
}, 300)

// --- changes ------------------------------------------------------------------

async function save (request: SaveRequest): Promise<Agent> {
  const s = session
  if (s === undefined) throw new Error('signed out')
  const options = request.avatarFile === undefined ? {} : { avatarFile: request.avatarFile }
  if (request.kind === 'create') {
    const agent = await s.client.createAgent(request.input, options)
    if (matches(agent, filters)) {
      roster.prepend(agent)
      notify(`Created ${agent.name}.`)
    } else {
      notify(`Created ${agent.name}; the current filters hide it.`)
    }
    updateListState()
    return agent
  }
  const agent = await s.client.updateAgent(request.agent.id, request.input, options)
  roster.update(agent)
  notify(`Saved ${agent.name}.`)
  return agent
}

async function rowAction (id: string, action: RowAction, trigger: HTMLElement): Promise<void> {
  const s = session
  const agent = roster.get(id)
  if (s === undefined || agent === undefined || roster.isBusy(id)) return
  if (action === 'edit') { form.openEdit(agent); return }
  if (action === 'delete') {
    ui.confirmText.textContent = `Delete ${agent.name} (service user id ${agent.serviceUserId})? This cannot be undone.`
    ui.confirm.returnValue = 'cancel'
    ui.confirm.showModal()
    const answer = await new Promise<string>((resolve) => {
      ui.confirm.addEventListener('close', () => { resolve(ui.confirm.returnValue) }, { once: true })
    })
    if (answer !== 'delete') { trigger.focus(); return }
  }
  roster.setBusy(id, true)
  try {
    if (action === 'delete') {
      await s.client.deleteAgent(id)
      roster.remove(id)
      updateListState()
      notify(`Deleted ${agent.name}.`)
      ui.heading.focus()
      return
    }
    const change = action === 'status'
      ? { status: agent.status === 'online' ? 'offline' as const : 'online' as const }
      : { active: !agent.active }
    const updated = await s.client.updateAgent(id, change)
    roster.setBusy(id, false)
    roster.update(updated)
    notify(action === 'status'
      ? `${updated.name} is now ${updated.status}.`
      : `${updated.name} is now ${updated.active ? 'active' : 'inactive'}.`)
  } catch (err) {
    if (session === s) notify(`Could not ${action === 'delete' ? 'delete' : 'change'} ${agent.name}: ${message(err)}`, 'error')
  } finally {
    roster.setBusy(id, false)
  }
}

// --- messages -------------------------------------------------------------------

function message (err: unknown): string {
  if (err instanceof AgentryError) return err.message
  if (err instanceof Error) return `the service could not be reached (${err.message})`
  return String(err)
}

function notify (text: string, kind: 'info' | 'error' = 'info'): void {
  ui.notice.dataset.kind = kind
  ui.notice.textContent = text
}

// --- wiring ---------------------------------------------------------------------

ui.signinForm.addEventListener('submit', (event) => {
  event.preventDefault()
  const token = ui.token.value.trim()
  if (token === '') {
    ui.tokenError.textContent = 'Enter an API token.'
    show(ui.tokenError, true)
    ui.token.setAttribute('aria-invalid', 'true')
    ui.token.focus()
    return
  }
  ui.signinButton.disabled = true
  ui.signinButton.textContent = 'Signing in…'
  signIn(token).then(() => {
    ui.token.value = ''
    ui.token.removeAttribute('aria-invalid')
    ui.heading.focus()
  }, (err: unknown) => {
    ui.tokenError.textContent = err instanceof AgentryError && err.status === 401
      ? 'This token is unknown or revoked.'
      : `Could not sign in: ${message(err)}`
    show(ui.tokenError, true)
    ui.token.setAttribute('aria-invalid', 'true')
    ui.token.focus()
  }).finally(() => {
    ui.signinButton.disabled = false
    ui.signinButton.textContent = 'Sign in'
  })
})

ui.signOut.addEventListener('click', () => { signOut() })
ui.newAgent.addEventListener('click', () => { form.openCreate() })
ui.loadMore.addEventListener('click', () => {
  if (loading > 0 || nextCursor === null) return
  void loadPage(nextCursor)
})

const reloadSoon = debounce(() => { void reload() }, 300)
ui.filters.addEventListener('submit', (event) => { event.preventDefault(); void reload() })
ui.q.addEventListener('input', reloadSoon)
ui.status.addEventListener('change', () => { void reload() })
ui.active.addEventListener('change', () => { void reload() })

ui.rows.addEventListener('click', (event) => {
  const button = event.target instanceof Element ? event.target.closest<HTMLButtonElement>('button[data-action]') : null
  const id = button?.closest('tr')?.dataset.id
  if (button === null || id === undefined || button.getAttribute('aria-disabled') === 'true') return
  void rowAction(id, button.dataset.action as RowAction, button)
})

ui.signinButton.disabled = false
const token = savedToken()
if (token !== undefined) start(newSession(token))
else ui.token.focus()
