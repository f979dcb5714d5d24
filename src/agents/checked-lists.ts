import type { ListedRowsCheck } from '../db/repositories/agents.js'
import { KeptLists } from './kept-lists.js'
import { listKeyOf, type CacheCounts, type CachedList } from './read-cache.js'

interface Entry extends CachedList {
  /** The version tags of the rows the answer was made of (checkListedRows). */
  readonly tags: string
}

/** Take one before reading a list, and hand it to set(): it refuses what was read before a restore. */
export interface CheckedTicket {
  readonly generation: number
  readonly server: string | undefined
}

/**
 * PostgreSQL's list cache: answers to GET /agents kept whole (envelope and Link header, as bytes),
 * each with the version tags of the rows it was made of, and sent again only after one short query
 * has found that the same request would read exactly those versions of exactly those rows now
 * (checkListedRows: every change to a row, through any instance or by hand, gives it a new tag).
 * So a list answered from here is never older than the database, as one read whole is, and
 * several instances need not tell each other of their writes: what the check costs is one round
 * trip and one short row back, against reading and parsing every row (BENCHMARKS.md).
 *
 * The check also says whether an agent of the widget has a lapsed heartbeat not yet written as
 * offline (the list is then read the usual way, which writes it first), and when the database
 * server started: after a restore from a backup the same tags may come back with other rows, so a
 * server seen to have started again empties the cache, and nothing read before that is kept.
 */
export class CheckedLists {
  private readonly lists = new KeptLists<Entry>()
  private server: string | undefined
  private generation = 0
  private hits = 0
  private misses = 0

  /** The answer kept for this widget and query, to be checked. `countMiss` false: none is not counted as a miss (the caller declines, and the usual way looks again). */
  candidate (widgetId: string, query: string, countMiss = true): Entry | undefined {
    const entry = this.lists.get(listKeyOf(widgetId, query))
    if (entry === undefined && countMiss) this.misses++
    return entry
  }

  /** The candidate's answer if the check found its rows as they were; otherwise it is dropped (and the miss counted unless `countMiss` is false). */
  checked (widgetId: string, query: string, entry: Entry, check: ListedRowsCheck, countMiss = true): CachedList | undefined {
    const sameServer = check.server === this.server
    this.learnServer(check.server)
    if (!sameServer || check.lapsed || check.tags !== entry.tags) {
      const key = listKeyOf(widgetId, query)
      if (this.lists.get(key) === entry) this.lists.delete(key)
      if (countMiss) this.misses++
      return undefined
    }
    this.hits++
    return entry
  }

  ticket (): CheckedTicket {
    return { generation: this.generation, server: this.server }
  }

  /** Whether the database server's start is known yet (see learnServer). */
  get knowsServer (): boolean {
    return this.server !== undefined
  }

  /** When the database server started, as a check or a query of its own found: a new start empties the cache. */
  learnServer (server: string): void {
    if (server === this.server) return
    if (this.server !== undefined) this.clear()
    this.server = server
  }

  /** Keeps an answer read under `ticket`, made of rows with these tags (refused if read before the server was known or seen to start again). */
  set (widgetId: string, query: string, list: CachedList, tags: string, ticket: CheckedTicket): void {
    if (ticket.generation !== this.generation || ticket.server === undefined || ticket.server !== this.server) return
    this.lists.set(listKeyOf(widgetId, query), { ...list, tags })
  }

  clear (): void {
    this.generation++
    this.lists.clear()
  }

  stats (): CacheCounts {
    return { entries: this.lists.size, hits: this.hits, misses: this.misses }
  }
}
