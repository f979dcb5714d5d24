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
 * PostgreSQL has no such cheap signal, and several instances write to it, so it runs without this cache.
 */
export class AgentReadCache {
  private readonly entries = new Map<string, Entry>()
  private generation = 0
  private seenExternal: number
  private hits = 0
  private misses = 0

  constructor (private readonly maxEntries: number, private readonly externalChanges: () => number) {
    this.seenExternal = externalChanges()
  }

  /** Take one before reading the database, and hand it to set(): it refuses what a write overtook. */
  ticket (): number {
    return this.generation
  }

  /** The entry, if fresh. `countMiss` false: a miss is not counted (the caller will look again). */
  get (widgetId: string, id: string, now: number, countMiss = true): CachedAgent | undefined {
    const external = this.externalChanges()
    if (external !== this.seenExternal) {
      this.seenExternal = external
      this.clear()
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
  stats (): { entries: number, hits: number, misses: number } {
    return { entries: this.entries.size, hits: this.hits, misses: this.misses }
  }
}

function keyOf (widgetId: string, id: string): string {
  return `${widgetId}/${id}`
}
