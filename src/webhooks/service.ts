import { randomUUID } from 'node:crypto'
import net from 'node:net'
import type { Db, DialectName } from '../db/index.js'
import { findEvent } from '../db/repositories/events.js'
import type { Transact } from '../db/group-commit.js'
import {
  attemptsOf, claimDelivery, type DeliveryClaim, deleteEndpoint, dueDeliveries, findDelivery, findEndpoint, findEndpointById, finishAttempt, insertEndpoint,
  listDeliveries, listEndpoints, requeueDelivery
} from '../db/repositories/webhooks.js'
import type { WebhookDeliveryRow, WebhookEndpointRow } from '../db/types.js'
import { AppError } from '../errors/index.js'
import { toApiEvent } from '../events/record.js'
import type { AddressPolicy } from '../net/guard.js'
import { ForbiddenAddressError, guardedRequest, KeptConnections } from '../net/request.js'
import type { HostResolver } from '../net/resolve.js'
import { generateSecret, sign } from './signing.js'

export interface WebhookSettings {
  timeoutMs: number
  retryBaseMs: number
  retryMaxMs: number
  retryWindowSeconds: number
  isAllowedAddress: AddressPolicy
  /** How endpoints' host names are resolved (default: the system's name servers). */
  resolver?: HostResolver
  /** This instance's clock, in unix milliseconds (tests: one running ahead of another instance's). */
  clock?: () => number
}

export interface Endpoint {
  id: string
  url: string
  eventTypes: string[]
  createdAt: number
}

export interface Delivery {
  id: string
  eventId: string
  eventType: string
  status: WebhookDeliveryRow['status']
  attempts: Array<{ attempt: number, at: number, statusCode: number | null, error: string | null, durationMs: number, responseBody: string | null }>
  nextAttemptAt: number | null
  createdAt: number
}

const ENDPOINT_ID = /^wh_[0-9a-f]{32}$/

/** A receiver's answer longer than this is not read to its end: its connection is closed instead. */
const DRAINED_BYTES = 64 * 1024
/** Attempts on their way from one instance at most. */
const MAX_IN_FLIGHT = 50

function endpointOf (row: WebhookEndpointRow): Endpoint {
  return { id: row.id, url: row.url, eventTypes: JSON.parse(row.event_types) as string[], createdAt: row.created_at }
}

function webhookNotFound (): AppError {
  return new AppError('not_found', 'No such webhook endpoint for this widget.')
}

/**
 * Webhook endpoints and the delivery of events to them: signed, retried with exponential backoff
 * and jitter, in order per endpoint, at least once, from whichever instance claims the delivery.
 */
export class WebhookService {
  /** Deliveries to the same endpoint reuse their connections (all made under this service's policy). */
  private readonly connections = new KeptConnections()
  /** Attempts on their way (dispatchDue). */
  private readonly inFlight = new Set<Promise<void>>()
  /** This instance's clock (unix ms): when deliveries are due and attempts' times. Claims go by the database's. */
  private readonly now: () => number

  constructor (
    private readonly db: Db, private readonly dialect: DialectName, private readonly transact: Transact, private readonly settings: WebhookSettings
  ) {
    this.now = settings.clock ?? Date.now
  }

  /** Closes the kept connections. */
  close (): void {
    this.connections.close()
  }

  async create (widgetId: string, input: { url: string, eventTypes?: string[] }): Promise<Endpoint & { secret: string }> {
    const url = mustBeWebhookUrl(input.url, this.settings.isAllowedAddress)
    const eventTypes = input.eventTypes === undefined || input.eventTypes.length === 0 ? ['*'] : [...new Set(input.eventTypes)]
    const row: WebhookEndpointRow = {
      id: `wh_${randomUUID().replace(/-/g, '')}`,
      widget_id: widgetId,
      url: url.href,
      secret: generateSecret(),
      event_types: JSON.stringify(eventTypes),
      created_at: Math.floor(Date.now() / 1000)
    }
    await insertEndpoint(this.db, row)
    return { ...endpointOf(row), secret: row.secret }
  }

  async list (widgetId: string): Promise<Endpoint[]> {
    return (await listEndpoints(this.db, widgetId)).map(endpointOf)
  }

  async delete (widgetId: string, id: string): Promise<void> {
    if (!ENDPOINT_ID.test(id) || !await this.db.transaction().execute((trx) => deleteEndpoint(trx, this.dialect, widgetId, id))) throw webhookNotFound()
  }

  /** The delivery log of an endpoint, newest events first, with every attempt and its response. */
  async deliveries (widgetId: string, endpointId: string, limit = 50): Promise<Delivery[]> {
    await this.mustFindEndpoint(widgetId, endpointId)
    const rows = await listDeliveries(this.db, endpointId, limit)
    const attempts = await attemptsOf(this.db, rows.map((r) => r.id))
    const events = new Map<number, string>()
    for (const r of rows) events.set(r.event_seq, (await findEvent(this.db, r.event_seq))?.type ?? 'unknown')
    return rows.map((r) => ({
      id: r.id,
      eventId: String(r.event_seq),
      eventType: events.get(r.event_seq) ?? 'unknown',
      status: r.status,
      attempts: attempts.filter((a) => a.delivery_id === r.id).map((a) => ({
        attempt: a.attempt, at: a.at, statusCode: a.status_code, error: a.error, durationMs: a.duration_ms, responseBody: a.response_body
      })),
      nextAttemptAt: r.status === 'pending' ? r.next_attempt_at : null,
      createdAt: r.created_at
    }))
  }

  /** Sends a delivery again as soon as possible, whatever became of it. */
  async resend (widgetId: string, endpointId: string, deliveryId: string): Promise<void> {
    await this.mustFindEndpoint(widgetId, endpointId)
    const delivery = await findDelivery(this.db, endpointId, deliveryId)
    if (delivery === undefined) throw new AppError('not_found', 'No such delivery for this webhook endpoint.')
    if (await findEvent(this.db, delivery.event_seq) === undefined) {
      throw new AppError('not_found', 'The event of this delivery is no longer kept (EVENTS_RETENTION_SECONDS), so it cannot be sent again.')
    }
    await requeueDelivery(this.db, deliveryId, this.now())
  }

  /**
   * Starts sending the deliveries that are due now (the first pending one of each endpoint, so an
   * endpoint's go in order), up to MAX_IN_FLIGHT at once on this instance; returns how many it
   * started. Attempts are not waited for: a receiver that takes its whole WEBHOOK_TIMEOUT_MS holds
   * up its own endpoint only, not the next round for every other. Safe on every instance.
   */
  async dispatchDue (): Promise<number> {
    const room = MAX_IN_FLIGHT - this.inFlight.size
    if (room <= 0) return 0
    const now = this.now()
    const due = await dueDeliveries(this.db, this.dialect, now, room)
    let started = 0
    for (const d of due) {
      const claim = await claimDelivery(this.db, this.dialect, d, now, this.settings.timeoutMs + 5000, randomUUID())
      if (claim === undefined) continue
      const attempt: Promise<void> = this.attempt(d, claim)
        .catch((err: unknown) => {
          // Its claim runs out and it is sent again (at least once, as the README says).
          process.emitWarning(`agentry webhook attempt failed: ${err instanceof Error ? err.message : String(err)}`)
        })
        .finally(() => { this.inFlight.delete(attempt) })
      this.inFlight.add(attempt)
      started++
    }
    return started
  }

  /** Waits for the attempts on their way (at shutdown, once no more are started). */
  async settle (): Promise<void> {
    await Promise.allSettled([...this.inFlight])
  }

  private async attempt (delivery: WebhookDeliveryRow, claim: DeliveryClaim): Promise<void> {
    const endpoint = await findEndpointById(this.db, delivery.endpoint_id)
    const event = await findEvent(this.db, delivery.event_seq)
    const started = this.now()
    // Its endpoint deleted meanwhile: so is the delivery, with nothing left to record.
    if (endpoint === undefined) return
    if (event === undefined) {
      await this.transact(async (trx) => {
        await finishAttempt(trx, { delivery_id: delivery.id, at: started, status_code: null, error: 'not sent: its event is no longer kept (EVENTS_RETENTION_SECONDS)', duration_ms: 0, response_body: null },
          { ...delivery, claim }, { status: 'failed', next_attempt_at: started, updated_at: started })
      })
      return
    }
    const body = JSON.stringify(toApiEvent(event))
    const timestamp = Math.floor(started / 1000)
    let statusCode: number | null = null
    let error: string | null = null
    let responseBody: string | null = null
    const controller = new AbortController()
    const timer = setTimeout(() => { controller.abort() }, this.settings.timeoutMs)
    try {
      const res = await guardedRequest(new URL(endpoint.url), {
        method: 'POST',
        signal: controller.signal,
        isAllowedAddress: this.settings.isAllowedAddress,
        resolver: this.settings.resolver,
        connections: this.connections,
        body,
        headers: {
          'content-type': 'application/json',
          'user-agent': 'Agentry-webhooks/1',
          'webhook-id': delivery.id,
          'webhook-timestamp': String(timestamp),
          'webhook-signature': sign(endpoint.secret, delivery.id, timestamp, body)
        }
      })
      statusCode = res.statusCode ?? 0
      responseBody = await readSnippet(res, 1024)
    } catch (err) {
      error = controller.signal.aborted
        ? `timed out after ${this.settings.timeoutMs} ms`
        : err instanceof ForbiddenAddressError ? `refused: the endpoint resolves to a private or loopback address (${err.message})` : (err as Error).message
    } finally {
      clearTimeout(timer)
    }
    const finished = this.now()
    const ok = statusCode !== null && statusCode >= 200 && statusCode < 300
    const expired = finished - delivery.created_at > this.settings.retryWindowSeconds * 1000
    // The attempt's record and the delivery's next state together: a delivery whose attempt was
    // recorded is never left claimed with its old count (its next attempt would be spaced as if this
    // one had not happened).
    await this.transact(async (trx) => {
      await finishAttempt(trx, { delivery_id: delivery.id, at: started, status_code: statusCode, error: storable(error), duration_ms: finished - started, response_body: storable(responseBody) }, { ...delivery, claim }, {
        status: ok ? 'succeeded' : expired ? 'failed' : 'pending',
        next_attempt_at: ok || expired ? finished : finished + this.backoff(delivery.attempts + 1),
        updated_at: finished
      })
    })
  }

  /** Exponential backoff with full jitter over the upper half: base·2^(n-1), capped, times 0.5–1. */
  private backoff (attempt: number): number {
    const ceiling = Math.min(this.settings.retryMaxMs, this.settings.retryBaseMs * 2 ** Math.min(attempt - 1, 30))
    return Math.round(ceiling * (0.5 + Math.random() / 2))
  }

  private async mustFindEndpoint (widgetId: string, id: string): Promise<WebhookEndpointRow> {
    const row = ENDPOINT_ID.test(id) ? await findEndpoint(this.db, widgetId, id) : undefined
    if (row === undefined) throw webhookNotFound()
    return row
  }
}

function mustBeWebhookUrl (raw: string, isAllowed: AddressPolicy): URL {
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    throw new AppError('validation_failed', 'url must be an absolute http:// or https:// URL.', [{ field: 'url', message: 'must be an absolute http(s) URL' }])
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new AppError('validation_failed', 'url must be an http:// or https:// URL.', [{ field: 'url', message: 'must be an http(s) URL' }])
  }
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1')
  if ((net.isIP(host) !== 0 && !isAllowed(host)) || (host === 'localhost' && !isAllowed('127.0.0.1'))) {
    throw new AppError('webhook_url_forbidden', 'The webhook URL points at a private, loopback or link-local address, which is never called; use a public URL.', [{ field: 'url', message: 'points at a private address' }])
  }
  return url
}

/**
 * The first max characters of a response body. The rest is read and dropped, up to a bound, so that
 * the connection can carry the next delivery; a longer body closes it.
 */
/**
 * Text as it can be stored on both databases: PostgreSQL's text cannot hold a NUL character, and a
 * receiver's answer may have any bytes (one that did made the attempt's record fail to be written,
 * and the delivery be sent again for ever). Shown as U+FFFD, as undecodable bytes are.
 */
function storable (text: string | null): string | null {
  return text === null ? null : text.replaceAll('\u0000', '\uFFFD')
}

async function readSnippet (res: NodeJS.ReadableStream & { destroy: () => void }, max: number): Promise<string> {
  let text = ''
  let bytes = 0
  for await (const chunk of res as AsyncIterable<Buffer>) {
    if (text.length < max) text += chunk.toString('utf8')
    bytes += chunk.length
    if (bytes > DRAINED_BYTES) { res.destroy(); break }
  }
  return text.slice(0, max)
}
