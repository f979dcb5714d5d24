import type { ServerResponse } from 'node:http'
import type { Db } from '../db/index.js'
import { latestEventSeq, listEventsAfter } from '../db/repositories/events.js'
import { toApiEvent } from './record.js'

export interface StreamSettings {
  pollMs: number
  heartbeatMs: number
  /** Streams one widget may have open on this instance at once (EVENTS_MAX_STREAMS). */
  maxStreams: number
}

/**
 * Server-Sent Events of a widget's event log. Each stream polls the log (so it sees changes made
 * through any instance), sends `id:` lines that a reconnecting client echoes as Last-Event-ID,
 * and comment lines as heartbeats so proxies keep idle streams open.
 */
export class EventStreams {
  private readonly open = new Set<() => void>()
  /** Streams open (or opening) per widget. */
  private readonly perWidget = new Map<string, number>()

  constructor (private readonly db: Db, private readonly settings: StreamSettings) {}

  /**
   * Takes one of the widget's EVENTS_MAX_STREAMS places on this instance for a stream about to
   * open (each polls the database): the place's release, or undefined when they are all taken.
   * One token, or one leaked read token, could otherwise open thousands, each polling, and take
   * the database's connections and the instance's CPU from every other widget.
   */
  reserve (widgetId: string): (() => void) | undefined {
    const count = this.perWidget.get(widgetId) ?? 0
    if (count >= this.settings.maxStreams) return undefined
    this.perWidget.set(widgetId, count + 1)
    let released = false
    return () => {
      if (released) return
      released = true
      const now = (this.perWidget.get(widgetId) ?? 1) - 1
      if (now === 0) this.perWidget.delete(widgetId)
      else this.perWidget.set(widgetId, now)
    }
  }

  /** Where a stream starts: after lastEventId, or when undefined after the widget's newest event (now). */
  async startingPoint (widgetId: string, lastEventId: number | undefined): Promise<number> {
    return lastEventId ?? await latestEventSeq(this.db, widgetId)
  }

  /**
   * Streams to res the events after `from` (startingPoint) until the client or the server closes,
   * or until `stillAllowed` (asked before each poll) says the caller's token no longer is; then
   * gives its place (reserve) back.
   */
  async stream (
    widgetId: string, from: number, res: ServerResponse, headers: Record<string, string | number | string[] | undefined>,
    stillAllowed: () => Promise<boolean>, release: () => void
  ): Promise<void> {
    // Listen for the client going away before anything is awaited, so an early hang-up is never missed.
    let closed = false
    const timers: NodeJS.Timeout[] = []
    const close = () => {
      if (closed) return
      closed = true
      for (const t of timers) clearInterval(t)
      this.open.delete(close)
      release()
      res.end()
    }
    this.open.add(close)
    res.on('close', close)

    // Gone already (while its starting point was read)?
    if (res.destroyed) { close(); return }
    let last = from
    res.writeHead(200, {
      ...headers,
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no'
    })
    // The position the stream starts from, as an id: a client that drops before any event arrives
    // still resumes from here (EventSource keeps the last id it saw, event or not).
    res.write(`retry: 2000\nid: ${last}\n\n`)
    let busy = false
    const poll = async () => {
      if (busy || closed) return
      busy = true
      try {
        // A token revoked while its stream is open ends the stream (its next request is refused),
        // whether or not its client reads.
        if (!await stillAllowed()) {
          // At once, with whatever the connection still holds unsent: not for this token any more.
          res.destroy()
          close()
          return
        }
        // Only as fast as the client reads: a page at most past what the connection holds, the rest
        // once it has drained (a client resuming from an old Last-Event-ID that reads slowly, or not
        // at all, would otherwise have every retained event held in memory for it).
        while (!closed && !res.writableNeedDrain) {
          const rows = await listEventsAfter(this.db, widgetId, last, 200)
          if (closed) break
          for (const row of rows) {
            const event = toApiEvent(row)
            res.write(`id: ${event.id}\nevent: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`)
            last = row.seq
          }
          if (rows.length < 200) break
        }
      } catch {
        // The database hiccuped: the next poll tries again from the same place.
      } finally {
        busy = false
      }
    }
    timers.push(setInterval(() => { void poll() }, this.settings.pollMs))
    timers.push(setInterval(() => { res.write(': keep-alive\n\n') }, this.settings.heartbeatMs))
    await poll()
  }

  /** How many streams are open now. */
  get size (): number {
    return this.open.size
  }

  /** Ends every open stream (at shutdown): clients reconnect elsewhere with their Last-Event-ID. */
  closeAll (): void {
    for (const close of [...this.open]) close()
  }
}
