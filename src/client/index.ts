/**
 * The typed Agentry client: every endpoint as a method, for Node.js 20+ and browsers.
 * No runtime dependencies beyond fetch; the types come from the server's own schemas
 * (type-only imports, erased at build time).
 */
import type { Agent, Avatar, CreateAgentInput, ListQueryInput, UpdateAgentInput, UpsertAgentInput } from '../http/schemas/agent.js'
import type { AgentEvent, EventType } from '../events/types.js'

export type { Agent, Avatar, AgentEvent, EventType }
export type CreateAgent = CreateAgentInput
export type UpdateAgent = UpdateAgentInput
export type UpsertAgent = UpsertAgentInput
export type ListAgentsQuery = ListQueryInput

export interface ErrorDetail { field?: string, message: string }

/** A failed call: the envelope's status, code and message (and field details for validation errors). */
export class AgentryError extends Error {
  override name = 'AgentryError'
  constructor (readonly status: number, readonly code: string, message: string, readonly details?: ErrorDetail[]) {
    super(message)
  }
}

export interface ClientOptions {
  /** Where the service is, e.g. `https://agents.example.com` (the API path is added). */
  baseUrl: string
  token: string
  /** Retries of calls that are safe to repeat (GET; POST with an Idempotency-Key). Default 2. */
  retries?: number
  /** Base of the exponential backoff between retries, in ms. Default 200. */
  retryDelayMs?: number
  /**
   * How long one attempt may take, answer read to its end included, in ms; then it fails with a
   * `TimeoutError` (and is retried if it is safe to repeat). Default 30000; 0 waits for ever.
   * The event stream of `subscribe` is not bounded by it.
   */
  timeoutMs?: number
  /**
   * The longest `Retry-After` (of a 429 or 503) waited for before a retry, in ms; an answer asking
   * for longer is thrown at once, for the caller to decide. Default 10000.
   */
  maxRetryAfterMs?: number
  /**
   * How long a create waits for an earlier attempt with the same Idempotency-Key that is still
   * running (409 `idempotency_key_in_progress`, as after a lost answer or a timed-out attempt: its
   * avatar may take `AVATAR_TIMEOUT_MS` to download), asking again every `Retry-After`; these
   * waits do not count as `retries`. Default 30000.
   */
  inProgressWaitMs?: number
  fetch?: typeof fetch
}

export interface Page<T> {
  data: T[]
  nextCursor: string | null
}

export interface Webhook { id: string, url: string, eventTypes: string[], createdAt: number }
export interface WebhookDelivery {
  id: string
  eventId: string
  eventType: string
  status: 'pending' | 'succeeded' | 'failed'
  attempts: Array<{ attempt: number, at: number, statusCode: number | null, error: string | null, durationMs: number, responseBody: string | null }>
  nextAttemptAt: number | null
  createdAt: number
}

/** An avatar image to upload instead of an avatar URL. */
export interface AvatarFile { data: Blob, filename?: string }

interface Envelope<T> { status: number, data?: T, meta?: Record<string, unknown>, error?: { code: string, message: string, details?: ErrorDetail[] } }

/** Field values the API takes: strings, booleans, numbers. */
type Fields = Record<string, string | number | boolean | null | undefined>

const API = '/api/external/v1'

export class AgentryClient {
  private readonly baseUrl: string
  private readonly fetch: typeof fetch
  private readonly retries: number
  private readonly retryDelayMs: number
  private readonly timeoutMs: number
  private readonly maxRetryAfterMs: number
  private readonly inProgressWaitMs: number

  constructor (private readonly options: ClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, '')
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis)
    this.retries = options.retries ?? 2
    this.retryDelayMs = options.retryDelayMs ?? 200
    this.timeoutMs = options.timeoutMs ?? 30_000
    this.maxRetryAfterMs = options.maxRetryAfterMs ?? 10_000
    this.inProgressWaitMs = options.inProgressWaitMs ?? 30_000
  }

  // --- agents ---------------------------------------------------------------

  /** One page of agents (pass limit or cursor), or the whole filtered list (neither). */
  async listAgents (query: ListAgentsQuery = {}): Promise<Page<Agent>> {
    const env = await this.call<Agent[]>('GET', `/agents${queryString(query)}`)
    return { data: env.data ?? [], nextCursor: (env.meta?.nextCursor as string | null | undefined) ?? null }
  }

  /** Every agent matching the filters, page by page (`limit` is the page size, default 100). */
  async * agents (query: Omit<ListAgentsQuery, 'cursor'> = {}): AsyncGenerator<Agent> {
    let cursor: string | undefined
    do {
      const page = await this.listAgents({ ...query, limit: query.limit ?? 100, cursor })
      yield * page.data
      cursor = page.nextCursor ?? undefined
    } while (cursor !== undefined)
  }

  async getAgent (id: string): Promise<Agent> {
    return await this.data<Agent>('GET', `/agents/${encodeURIComponent(id)}`)
  }

  async getAgentByServiceUserId (serviceUserId: string): Promise<Agent> {
    return await this.data<Agent>('GET', `/agents/by-service-user-id/${encodeURIComponent(serviceUserId)}`)
  }

  /**
   * Creates an agent. Sent with an Idempotency-Key (one is made if none is given), so retries never
   * duplicate it. An error thrown carries the key as `idempotencyKey`: calling again with it (and
   * the same input) gets the agent if the failed call did create it, and creates it otherwise.
   */
  async createAgent (input: CreateAgent, options: { idempotencyKey?: string, avatarFile?: AvatarFile } = {}): Promise<Agent> {
    const key = options.idempotencyKey ?? globalThis.crypto.randomUUID()
    try {
      return await this.data<Agent>('POST', '/agents', body(input, options.avatarFile), { 'idempotency-key': key })
    } catch (err) {
      if (err instanceof Error) Object.assign(err, { idempotencyKey: key })
      throw err
    }
  }

  /** Changes the fields given. With ifMatch (an ETag), only if the agent has not changed since. */
  async updateAgent (id: string, input: UpdateAgent, options: { ifMatch?: string, avatarFile?: AvatarFile } = {}): Promise<Agent> {
    return await this.data<Agent>('PUT', `/agents/${encodeURIComponent(id)}`, body(input, options.avatarFile), ifMatch(options.ifMatch))
  }

  /** Creates or updates by your own id; idempotent. */
  async upsertAgent (serviceUserId: string, input: UpsertAgent, options: { refreshAvatar?: boolean, avatarFile?: AvatarFile } = {}): Promise<{ agent: Agent, created: boolean }> {
    const env = await this.call<Agent>('PUT', `/agents/by-service-user-id/${encodeURIComponent(serviceUserId)}${options.refreshAvatar === true ? '?refreshAvatar=true' : ''}`, body(input, options.avatarFile))
    return { agent: env.data as Agent, created: env.meta?.created === true }
  }

  async deleteAgent (id: string, options: { ifMatch?: string } = {}): Promise<Agent> {
    return await this.data<Agent>('DELETE', `/agents/${encodeURIComponent(id)}`, undefined, ifMatch(options.ifMatch))
  }

  /** Marks the agent online for the service's presence TTL; returns until when. */
  async heartbeat (id: string): Promise<{ agent: Agent, onlineUntil: number }> {
    const env = await this.call<Agent>('POST', `/agents/${encodeURIComponent(id)}/heartbeat`)
    return { agent: env.data as Agent, onlineUntil: env.meta?.onlineUntil as number }
  }

  async availability (): Promise<{ online: number, available: boolean }> {
    return await this.data('GET', '/agents/availability')
  }

  // --- webhooks ---------------------------------------------------------------

  /** Registers an endpoint; the answer's secret is shown only now. */
  async createWebhook (input: { url: string, eventTypes?: Array<EventType | '*'> }): Promise<Webhook & { secret: string }> {
    return await this.data('POST', '/webhooks', body(input))
  }

  async listWebhooks (): Promise<Webhook[]> {
    return await this.data('GET', '/webhooks')
  }

  async deleteWebhook (id: string): Promise<void> {
    await this.call('DELETE', `/webhooks/${encodeURIComponent(id)}`)
  }

  async webhookDeliveries (id: string, limit?: number): Promise<WebhookDelivery[]> {
    return await this.data('GET', `/webhooks/${encodeURIComponent(id)}/deliveries${limit === undefined ? '' : `?limit=${limit}`}`)
  }

  async resendDelivery (webhookId: string, deliveryId: string): Promise<void> {
    await this.call('POST', `/webhooks/${encodeURIComponent(webhookId)}/deliveries/${encodeURIComponent(deliveryId)}/resend`)
  }

  // --- events -----------------------------------------------------------------

  /**
   * Calls onEvent for every agent event, live, until the signal aborts. Reconnects by itself after
   * a dropped connection, resuming after the last event seen, so no event is missed.
   */
  async subscribe (onEvent: (event: AgentEvent) => void, options: { signal?: AbortSignal, lastEventId?: string, onError?: (err: unknown) => void } = {}): Promise<void> {
    let last = options.lastEventId
    while (!isAborted(options.signal)) {
      try {
        const res = await this.fetch(`${this.baseUrl}${API}/events`, {
          headers: { authorization: `Bearer ${this.options.token}`, accept: 'text/event-stream', ...(last === undefined ? {} : { 'last-event-id': last }) },
          signal: options.signal
        })
        if (!res.ok || res.body === null) throw await toError(res)
        for await (const message of sseMessages(res.body)) {
          // Any id line moves the resume point, the stream's opening one included.
          if (message.id !== undefined) last = message.id
          if (message.data === undefined) continue
          onEvent(JSON.parse(message.data) as AgentEvent)
        }
      } catch (err) {
        if (isAborted(options.signal)) return
        if (err instanceof AgentryError && err.status < 500 && err.status !== 429) throw err
        options.onError?.(err)
      }
      await sleep(this.retryDelayMs * 5, options.signal)
    }
  }

  // --- plumbing ---------------------------------------------------------------

  private async data<T> (method: string, path: string, payload?: Body, headers: Record<string, string> = {}): Promise<T> {
    return (await this.call<T>(method, path, payload, headers)).data as T
  }

  private async call<T> (method: string, path: string, payload?: Body, headers: Record<string, string> = {}): Promise<Envelope<T>> {
    const safe = method === 'GET' || (method === 'POST' && headers['idempotency-key'] !== undefined)
    let waitingSince: number | undefined
    for (let attempt = 0; ; attempt++) {
      let res: Response
      let error: AgentryError
      try {
        res = await this.fetch(`${this.baseUrl}${API}${path}`, {
          method,
          headers: { authorization: `Bearer ${this.options.token}`, accept: 'application/json', ...payload?.headers, ...headers },
          body: payload?.body,
          signal: this.timeoutMs > 0 ? AbortSignal.timeout(this.timeoutMs) : undefined
        })
        if (res.ok) return await res.json() as Envelope<T>
        error = await toError(res)
      } catch (err) {
        // No answer, an answer cut off half way (the connection dropped) or too slow (TimeoutError):
        // a network error, retried where that is safe.
        if (safe && attempt < this.retries) { await sleep(this.backoff(attempt)); continue }
        throw err
      }
      if (safe && res.status === 409 && error.code === 'idempotency_key_in_progress') {
        // An earlier attempt is still running: waited for, without using up a retry.
        waitingSince ??= Date.now()
        const wait = retryAfterMs(res) ?? 1000
        if (Date.now() + wait - waitingSince <= this.inProgressWaitMs) {
          attempt--
          await sleep(wait)
          continue
        }
      }
      const transient = res.status >= 500 || res.status === 429
      if (safe && transient && attempt < this.retries) {
        const wait = retryAfterMs(res) ?? this.backoff(attempt)
        if (wait <= this.maxRetryAfterMs) {
          await sleep(wait)
          continue
        }
      }
      throw error
    }
  }

  private backoff (attempt: number): number {
    return this.retryDelayMs * 2 ** attempt * (0.5 + Math.random() / 2)
  }
}

/** The answer's Retry-After (in seconds), in ms; undefined without one. */
function retryAfterMs (res: Response): number | undefined {
  const seconds = Number(res.headers.get('retry-after'))
  return Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : undefined
}

interface Body { body: string | FormData, headers?: Record<string, string> }

function body (input: object, file?: AvatarFile): Body {
  if (file === undefined) return { body: JSON.stringify(input), headers: { 'content-type': 'application/json' } }
  const form = new FormData()
  for (const [key, value] of Object.entries(input as Fields)) {
    if (value !== undefined && value !== null) form.append(key, String(value))
  }
  form.append('avatar', file.data, file.filename ?? 'avatar')
  return { body: form }
}

function ifMatch (etag: string | undefined): Record<string, string> {
  return etag === undefined ? {} : { 'if-match': etag }
}

function queryString (query: Fields): string {
  const params = new URLSearchParams()
  for (const [key, value] of Object.entries(query)) if (value !== undefined) params.set(key, String(value))
  const text = params.toString()
  return text === '' ? '' : `?${text}`
}

async function toError (res: Response): Promise<AgentryError> {
  const text = await res.text()
  try {
    const env = JSON.parse(text) as Envelope<unknown>
    if (env.error !== undefined) return new AgentryError(res.status, env.error.code, env.error.message, env.error.details)
  } catch { /* not an envelope: a proxy's page, say */ }
  return new AgentryError(res.status, 'http_error', `HTTP ${res.status}: ${text.slice(0, 200)}`)
}

/** Splits a text/event-stream body into messages (id, event, data). */
async function * sseMessages (stream: ReadableStream<Uint8Array>): AsyncGenerator<{ id?: string, event?: string, data?: string }> {
  const decoder = new TextDecoder()
  const reader = stream.getReader()
  let buffer = ''
  for (;;) {
    const { value, done } = await reader.read()
    if (done) return
    buffer += decoder.decode(value, { stream: true })
    let end: number
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end)
      buffer = buffer.slice(end + 2)
      const message: { id?: string, event?: string, data?: string } = {}
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue
        const colon = line.indexOf(':')
        const field = colon < 0 ? line : line.slice(0, colon)
        const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '')
        if (field === 'data') message.data = message.data === undefined ? value : `${message.data}\n${value}`
        else if (field === 'id' || field === 'event') message[field] = value
      }
      if (message.data !== undefined || message.id !== undefined) yield message
    }
  }
}

function isAborted (signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true
}

function sleep (ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms)
    signal?.addEventListener('abort', () => { clearTimeout(timer); resolve() }, { once: true })
  })
}
