import type { AgentRow } from '../db/types.js'
import { setBounded } from '../util/bounded-map.js'

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
}

/** Lists kept at most, and their bytes at most: a crawl through many pages cannot grow it past that. */
const MAX_LISTS = 256
const MAX_LIST_BYTES = 16 * 1024 * 1024

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
 * It also keeps answers to GET /agents (lists and pages, whole envelopes), which any write at all
 * made by this instance drops (see changed(); a list may hold any agent, or gain a new one), as does
 * a change by another connection; and each is kept only until the next heartbeat anywhere lapses.
 *
 * PostgreSQL has no such cheap signal, and several instances write to it, so it runs without this cache.
 */
export class AgentReadCache {
  private readonly entries = new Map<string, Entry>()
  private generation = 0
  private seenExternal: number
  private hits = 0
  private misses = 0
  private readonly lists = new Map<string, ListEntry>()
  /** The generation the lists were read under: any other, and they are all stale. */
  private listsGeneration = 0
  private listBytes = 0
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

  /** A list answer kept, if still fresh; `key` names the widget and the query. `countMiss` as for get(). */
  getList (key: string, now: number, countMiss = true): CachedList | undefined {
    this.changedElsewhere()
    this.dropStaleLists()
    const entry = this.lists.get(key)
    if (entry === undefined || now >= entry.validUntil) {
      if (entry !== undefined) this.dropList(key, entry)
      if (countMiss) this.listMisses++
      return undefined
    }
    this.listHits++
    return entry
  }

  /** Keeps a list answer read under `ticket` (refused if anything was written since) until validUntil. */
  setList (key: string, list: CachedList, validUntil: number, ticket: number): void {
    if (ticket !== this.generation || this.maxEntries === 0) return
    this.dropStaleLists()
    const bytes = sizeOf(list)
    if (bytes > MAX_LIST_BYTES / 4) return
    const old = this.lists.get(key)
    if (old !== undefined) this.dropList(key, old)
    for (const [oldestKey, oldest] of this.lists) {
      if (this.lists.size < MAX_LISTS && this.listBytes + bytes <= MAX_LIST_BYTES) break
      this.dropList(oldestKey, oldest)
    }
    this.lists.set(key, { ...list, validUntil })
    this.listBytes += bytes
  }

  /** After any committed write of this instance: every list may have changed. */
  changed (): void {
    this.generation++
  }

  /** After a committed write to this agent. */
  invalidate (widgetId: string, id: string): void {
    this.generation++
    this.entries.delete(keyOf(widgetId, id))
  }

  clear (): void {
    this.generation++
    this.entries.clear()
  }

  /** For /metrics: entries held, and lookups answered from memory or not since start. */
  stats (): ReadCacheStats {
    return {
      entries: this.entries.size,
      hits: this.hits,
      misses: this.misses,
      lists: { entries: this.listsGeneration === this.generation ? this.lists.size : 0, hits: this.listHits, misses: this.listMisses }
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
    if (this.listsGeneration === this.generation) return
    this.lists.clear()
    this.listBytes = 0
    this.listsGeneration = this.generation
  }

  private dropList (key: string, entry: CachedList): void {
    this.lists.delete(key)
    this.listBytes -= sizeOf(entry)
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

/** A list's size in memory, near enough: its bytes, and its Link header's. */
function sizeOf (list: CachedList): number {
  return list.body.length + 2 * (list.link?.length ?? 0)
}

function keyOf (widgetId: string, id: string): string {
  return `${widgetId}/${id}`
}
