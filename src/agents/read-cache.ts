import type { AgentRow } from '../db/types.js'
import { setBounded } from '../util/bounded-map.js'
import { KeptLists } from './kept-lists.js'

/** What GET /agents/:id answers, ready to send: the agent's JSON and its strong ETag. */
export interface AgentRepresentation {
  readonly json: string
  readonly etag: string
}

/** A cached agent: its representation, and the row it was made from (writes start from it). */
export interface CachedAgent extends AgentRepresentation {
  readonly row: AgentRow
}

/** A whole answer to GET /agents (one page, or a whole list that fits one batch), ready to send. */
export interface CachedList {
  /** The envelope, as sent (UTF-8 already: sent again as it is, with nothing to encode or measure). */
  readonly body: Buffer
  /** The Link header (rel="next") of a page that has one. */
  readonly link: string | undefined
}

interface ListEntry extends CachedList {
  readonly validUntil: number
  /** The widget's list epoch it was read under (see changed()). */
  readonly widgetEpoch: number
}

/** Taken before reading a list (listTicket), handed to setList: it refuses what a write overtook. */
export interface ListTicket {
  readonly epoch: number
  readonly widgetEpoch: number
}

interface Entry extends CachedAgent {
  /** Unix seconds from which the entry is stale: when a heartbeat lapses, the agent reads as offline. */
  readonly validUntil: number
}

/**
 * A per-instance cache of agents as GET /agents/:id shows them, so a read of an unchanged agent costs
 * no query, no serialisation and no hashing; a write starts from the cached row instead of reading it
 * (its version check still guards it, and a retry reads the database). It is only correct where this
 * instance sees every write:
 *
 * - writes made by this instance call invalidate() once committed (then may store the row they wrote,
 *   with a fresh ticket); a read that began before a write cannot store what it read afterwards (the
 *   ticket taken before reading no longer matches);
 * - writes made by any other connection to the same database are noticed through `externalChanges`
 *   (SQLite's `PRAGMA data_version`, which moves only when another connection commits: ~1-2 µs),
 *   checked on every lookup; any such change empties the cache. So two servers on one SQLite file,
 *   or the CLI beside a server, never read stale agents, and a lone server keeps its cache.
 *
 * It also keeps answers to GET /agents (lists and pages, whole envelopes). A write made by this
 * instance drops its widget's lists (see changed(); a list may hold any agent of the widget, or gain
 * a new one), and a write it cannot place in one widget drops them all, as does a change by another
 * connection; and each is kept only until the next heartbeat anywhere lapses.
 *
 * PostgreSQL has no such cheap signal, and several instances write to it, so it runs without this
 * cache; its lists are kept by CheckedLists instead, each checked against the database before it is sent.
 */
export class AgentReadCache {
  private readonly entries = new Map<string, Entry>()
  private generation = 0
  private seenExternal: number
  private hits = 0
  private misses = 0
  private readonly lists = new KeptLists<ListEntry>()
  /** Moves with every change that may touch any widget's lists: then they are all stale. */
  private listEpoch = 0
  /** The list epoch the kept lists were read under. */
  private listsEpoch = 0
  /** Per widget, moves with every write to it: its lists read before are stale. */
  private readonly widgetEpochs = new Map<string, number>()
  private listHits = 0
  private listMisses = 0

  constructor (private readonly maxEntries: number, private readonly externalChanges: () => number) {
    this.seenExternal = externalChanges()
  }

  /** Take one before reading the database, and hand it to set(): it refuses what a write overtook. */
  ticket (): number {
    return this.generation
  }

  /** The entry, if fresh. `countMiss` false: a miss is not counted (the caller will look again). */
  get (widgetId: string, id: string, now: number, countMiss = true): CachedAgent | undefined {
    if (this.changedElsewhere()) {
      if (countMiss) this.misses++
      return undefined
    }
    const key = keyOf(widgetId, id)
    const entry = this.entries.get(key)
    if (entry === undefined || now >= entry.validUntil) {
      if (entry !== undefined) this.entries.delete(key)
      if (countMiss) this.misses++
      return undefined
    }
    this.hits++
    return entry
  }

  set (widgetId: string, id: string, agent: CachedAgent, validUntil: number, ticket: number): void {
    if (ticket !== this.generation || this.maxEntries === 0) return
    setBounded(this.entries, keyOf(widgetId, id), { ...agent, validUntil }, this.maxEntries)
  }

  /** A list answer kept for the widget, if still fresh; `query` names the query. `countMiss` as for get(). */
  getList (widgetId: string, query: string, now: number, countMiss = true): CachedList | undefined {
    this.changedElsewhere()
    this.dropStaleLists()
    const key = listKeyOf(widgetId, query)
    const entry = this.lists.get(key)
    if (entry === undefined || now >= entry.validUntil || entry.widgetEpoch !== this.widgetEpoch(widgetId)) {
      if (entry !== undefined) this.lists.delete(key)
      if (countMiss) this.listMisses++
      return undefined
    }
    this.listHits++
    return entry
  }

  /** Take one before reading a list of the widget, and hand it to setList(). */
  listTicket (widgetId: string): ListTicket {
    return { epoch: this.listEpoch, widgetEpoch: this.widgetEpoch(widgetId) }
  }

  /** Keeps a list answer read under `ticket` (refused if the widget was written since) until validUntil. */
  setList (widgetId: string, query: string, list: CachedList, validUntil: number, ticket: ListTicket): void {
    if (ticket.epoch !== this.listEpoch || ticket.widgetEpoch !== this.widgetEpoch(widgetId) || this.maxEntries === 0) return
    this.dropStaleLists()
    this.lists.set(listKeyOf(widgetId, query), { ...list, validUntil, widgetEpoch: ticket.widgetEpoch })
  }

  /**
   * After a committed write of this instance (or a failed one: no telling): the widget's lists may
   * have changed; without a widget, every list may have.
   */
  changed (widgetId?: string): void {
    this.generation++
    if (widgetId === undefined) {
      this.listEpoch++
      // Every widget's lists go with the epoch, so their own counts can start again.
      this.widgetEpochs.clear()
    } else {
      this.widgetEpochs.set(widgetId, this.widgetEpoch(widgetId) + 1)
    }
  }

  /** After a committed write to this agent. */
  invalidate (widgetId: string, id: string): void {
    this.generation++
    this.entries.delete(keyOf(widgetId, id))
  }

  private widgetEpoch (widgetId: string): number {
    return this.widgetEpochs.get(widgetId) ?? 0
  }

  clear (): void {
    this.generation++
    this.listEpoch++
    this.widgetEpochs.clear()
    this.entries.clear()
  }

  /** For /metrics: entries held, and lookups answered from memory or not since start. */
  stats (): ReadCacheStats {
    return {
      entries: this.entries.size,
      hits: this.hits,
      misses: this.misses,
      lists: { entries: this.listsEpoch === this.listEpoch ? this.lists.size : 0, hits: this.listHits, misses: this.listMisses }
    }
  }

  /** Empties the cache when another connection has committed since the last look; true if so. */
  private changedElsewhere (): boolean {
    const external = this.externalChanges()
    if (external === this.seenExternal) return false
    this.seenExternal = external
    this.clear()
    return true
  }

  private dropStaleLists (): void {
    if (this.listsEpoch === this.listEpoch) return
    this.lists.clear()
    this.listsEpoch = this.listEpoch
  }
}

/** Entries held, and lookups answered from memory or not since start. */
export interface CacheCounts {
  entries: number
  hits: number
  misses: number
}

/** Of the agents kept, and of the lists. */
export interface ReadCacheStats extends CacheCounts {
  lists: CacheCounts
}

function keyOf (widgetId: string, id: string): string {
  return `${widgetId}/${id}`
}

/** Names a widget's list answer among all widgets'. */
export function listKeyOf (widgetId: string, query: string): string {
  return `${widgetId}\n${query}`
}
