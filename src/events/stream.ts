import type { ServerResponse } from 'node:http'
import type { Db } from '../db/index.js'
import { latestEventSeq, listEventsAfter } from '../db/repositories/events.js'
import type { EventRow } from '../db/types.js'
import { toApiEvent } from './record.js'

export interface StreamSettings {
  pollMs: number
  heartbeatMs: number
  /** Streams one widget may have open on this instance at once (EVENTS_MAX_STREAMS). */
  maxStreams: number
}

/** What the streams report when scraped (agentry_event_stream* in /metrics). */
export interface StreamStats {
  /** Streams open now, by where their events come from: the widget's shared poller, or reads of their own. */
  live: number
  catchingUp: number
  /** Widgets with a shared poller on this instance (one per widget with a stream open). */
  pollers: number
  /** Reads of the event log since start: by the shared pollers, and by streams catching up on their own. */
  sharedReads: number
  ownReads: number
}

/** Events read at once: a shared poll's page, and a catching-up stream's. */
const PAGE = 200

/** An event as the stream sends it, written out once for all the streams it goes to. */
interface Sent {
  seq: number
  text: string
}

/** One open stream of a widget. */
interface Member {
  res: ServerResponse
  /** The id of the last event sent (or the starting point). */
  last: number
}

/**
 * The streams of one widget on this instance and the one poller that reads the widget's new events
 * for all of them. Streams at the widget's head are live: each poll reads once what came after the
 * head and writes it to each of them. A stream behind the head (resuming from an older
 * Last-Event-ID, or whose client stopped reading) reads on its own, a page at a time as its client
 * drains, and joins once it has read up to the head.
 */
class WidgetFeed {
  readonly members = new Set<Member>()
  /** Those in the shared flow (fed by the poller); the others catch up with reads of their own. */
  readonly live = new Set<Member>()
  /** The last event the poller has read (and sent to every live stream). */
  head = 0
  private busy = false
  private readonly timer: NodeJS.Timeout

  constructor (private readonly db: Db, private readonly widgetId: string, pollMs: number, private readonly counts: { sharedReads: number }) {
    this.timer = setInterval(() => { void this.poll() }, pollMs)
  }

  stop (): void {
    clearInterval(this.timer)
  }

  /**
   * A stream that has just read to the end of the log (a page not full) joins the shared flow if it
   * is at or past the head: the poller's next read starts at the head, and the stream is sent only
   * what it has not had (send skips what it is past). With no live stream the head is wherever the
   * log was last read, so it moves to this stream's place (a poll still on its way for the old head
   * is then dropped, see poll). A stream behind the head stays out: it has not seen what the live
   * ones were sent, and reads on (its next page will take it past the head; on PostgreSQL too,
   * since a widget's events become visible in id order).
   */
  join (member: Member): boolean {
    if (this.live.size === 0) this.head = member.last
    else if (member.last < this.head) return false
    this.live.add(member)
    return true
  }

  leave (member: Member): void {
    this.live.delete(member)
  }

  /** One read of what came after the head, sent to every live stream; a page more while pages come full. */
  private async poll (): Promise<void> {
    if (this.busy) return
    this.busy = true
    try {
      while (this.live.size > 0) {
        const after = this.head
        this.counts.sharedReads++
        const rows = await listEventsAfter(this.db, this.widgetId, after, PAGE)
        // Every live stream left meanwhile and another moved the head to its own place: what was read
        // is not what the live ones need (the next poll reads after the new head).
        if (this.head !== after || rows.length === 0) break
        const page = rows.map(sent)
        this.head = rows[rows.length - 1]!.seq
        for (const member of [...this.live]) {
          // A client not reading what it was sent (its connection full) is not sent more: it leaves
          // the flow, and catches up on its own as it drains. It neither holds the others back nor
          // has more than this page beyond what its connection holds.
          if (member.res.writableNeedDrain) this.leave(member)
          else send(member, page)
        }
        if (rows.length < PAGE) break
      }
    } catch {
      // The database hiccuped: the next poll tries again from the same head.
    } finally {
      this.busy = false
    }
  }
}

function sent (row: EventRow): Sent {
  const event = toApiEvent(row)
  return { seq: row.seq, text: `id: ${event.id}\nevent: ${event.type}\ndata: ${JSON.stringify(event)}\n\n` }
}

/** Writes the events the stream has not had yet (those past its last), in order. */
function send (member: Member, page: Sent[]): void {
  for (const event of page) {
    if (event.seq <= member.last) continue
    member.res.write(event.text)
    member.last = event.seq
  }
}

/**
 * Server-Sent Events of a widget's event log. The log is polled (so a stream sees changes made
 * through any instance) once per EVENTS_POLL_MS per widget with a stream open on this instance,
 * whatever the number of its streams (see WidgetFeed). Streams send `id:` lines that a
 * reconnecting client echoes as Last-Event-ID, and comment lines as heartbeats so proxies keep idle
 * streams open.
 */
export class EventStreams {
  private readonly open = new Set<() => void>()
  /** Streams open (or opening) per widget. */
  private readonly perWidget = new Map<string, number>()
  /** The shared poller and streams of each widget with a stream open. */
  private readonly feeds = new Map<string, WidgetFeed>()
  private readonly counts = { sharedReads: 0, ownReads: 0 }

  constructor (private readonly db: Db, private readonly settings: StreamSettings) {}

  /**
   * Takes one of the widget's EVENTS_MAX_STREAMS places on this instance for a stream about to
   * open: the place's release, or undefined when they are all taken. A widget's streams share one
   * poller, but each holds a socket and what its client has not read yet (up to a page beyond what
   * the connection holds), and one catching up reads on its own: one token, or one leaked read
   * token, could otherwise open thousands and take the instance's memory and sockets, and with
   * them resuming from an old Last-Event-ID the database's connections, from every other widget.
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

  /** Where a stream starts: after lastEventId (at most the widget's newest event), or when undefined after the newest (now). */
  async startingPoint (widgetId: string, lastEventId: number | undefined): Promise<number> {
    const newest = await latestEventSeq(this.db, widgetId)
    // An id past the widget's newest event was never sent to anyone (made up, or another widget's):
    // taken as it is, it would move the widget's shared head past every event to come (see join).
    return lastEventId === undefined ? newest : Math.min(lastEventId, newest)
  }

  /**
   * Streams to res the events after `from` (startingPoint) until the client or the server closes,
   * or until `stillAllowed` (asked once per poll interval) says the caller's token no longer is;
   * then gives its place (reserve) back.
   */
  async stream (
    widgetId: string, from: number, res: ServerResponse, headers: Record<string, string | number | string[] | undefined>,
    stillAllowed: () => Promise<boolean>, release: () => void
  ): Promise<void> {
    // Listen for the client going away before anything is awaited, so an early hang-up is never missed.
    let closed = false
    const timers: NodeJS.Timeout[] = []
    const member: Member = { res, last: from }
    let feed: WidgetFeed | undefined
    const close = () => {
      if (closed) return
      closed = true
      for (const t of timers) clearInterval(t)
      this.open.delete(close)
      if (feed !== undefined) {
        feed.leave(member)
        feed.members.delete(member)
        // The widget's last stream here: its poller stops.
        if (feed.members.size === 0) {
          feed.stop()
          if (this.feeds.get(widgetId) === feed) this.feeds.delete(widgetId)
        }
      }
      release()
      res.end()
    }
    this.open.add(close)
    res.on('close', close)

    // Gone already (while its starting point was read)?
    if (res.destroyed) { close(); return }
    feed = this.feeds.get(widgetId)
    if (feed === undefined) {
      feed = new WidgetFeed(this.db, widgetId, this.settings.pollMs, this.counts)
      this.feeds.set(widgetId, feed)
    }
    feed.members.add(member)
    const shared = feed
    res.writeHead(200, {
      ...headers,
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no'
    })
    // The position the stream starts from, as an id: a client that drops before any event arrives
    // still resumes from here (EventSource keeps the last id it saw, event or not).
    res.write(`retry: 2000\nid: ${from}\n\n`)
    let busy = false
    let awaitingDrain = false
    const tick = async () => {
      if (busy || closed) return
      busy = true
      try {
        // A token revoked while its stream is open ends the stream (its next request is refused),
        // whether or not its client reads, live or catching up.
        if (!await stillAllowed()) {
          // At once, with whatever the connection still holds unsent: not for this token any more.
          res.destroy()
          close()
          return
        }
        // Out of the shared flow, catching up: only as fast as the client reads, a page at most past
        // what the connection holds, the rest once it has drained (a client resuming from an old
        // Last-Event-ID that reads slowly, or not at all, would otherwise have every retained event
        // held in memory for it). A page not full is the end of the log: it joins the flow there.
        while (!closed && !shared.live.has(member) && !res.writableNeedDrain) {
          this.counts.ownReads++
          const rows = await listEventsAfter(this.db, widgetId, member.last, PAGE)
          if (closed) break
          send(member, rows.map(sent))
          if (rows.length < PAGE) {
            // Behind the head still (the poller read past where this read ended): the next tick reads on.
            shared.join(member)
            break
          }
        }
        // Held back by a full connection: read on as soon as the client has taken what it holds,
        // not at the next tick (a page fills a connection's buffer, so a stream catching up on
        // thousands of events moved one page per EVENTS_POLL_MS, however fast its client read).
        if (!closed && !shared.live.has(member) && res.writableNeedDrain && !awaitingDrain) {
          awaitingDrain = true
          res.once('drain', () => { awaitingDrain = false; void tick() })
        }
      } catch {
        // The database hiccuped: the next tick tries again from the same place.
      } finally {
        busy = false
      }
    }
    timers.push(setInterval(() => { void tick() }, this.settings.pollMs))
    timers.push(setInterval(() => { res.write(': keep-alive\n\n') }, this.settings.heartbeatMs))
    await tick()
  }

  /** How many streams are open now. */
  get size (): number {
    return this.open.size
  }

  stats (): StreamStats {
    let live = 0
    let members = 0
    for (const feed of this.feeds.values()) {
      live += feed.live.size
      members += feed.members.size
    }
    return { live, catchingUp: members - live, pollers: this.feeds.size, ...this.counts }
  }

  /** Ends every open stream (at shutdown): clients reconnect elsewhere with their Last-Event-ID. */
  closeAll (): void {
    for (const close of [...this.open]) close()
  }
}
