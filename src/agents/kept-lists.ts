import type { CachedList } from './read-cache.js'

/** Lists kept at most, and their bytes at most: a crawl through many pages cannot grow it past that. */
const MAX_LISTS = 256
const MAX_LIST_BYTES = 16 * 1024 * 1024

/**
 * Answers to GET /agents kept by name, at most MAX_LISTS of them and MAX_LIST_BYTES in all: when
 * one more would not fit, those kept longest ago go first. One bigger than a quarter of the bytes
 * is not kept at all. Used by both list caches (AgentReadCache on SQLite, CheckedLists on PostgreSQL).
 */
export class KeptLists<E extends CachedList> {
  private readonly lists = new Map<string, E>()
  private bytes = 0

  get size (): number {
    return this.lists.size
  }

  get (key: string): E | undefined {
    return this.lists.get(key)
  }

  set (key: string, entry: E): void {
    this.delete(key)
    const bytes = sizeOf(entry)
    if (bytes > MAX_LIST_BYTES / 4) return
    for (const [oldestKey] of this.lists) {
      if (this.lists.size < MAX_LISTS && this.bytes + bytes <= MAX_LIST_BYTES) break
      this.delete(oldestKey)
    }
    this.lists.set(key, entry)
    this.bytes += bytes
  }

  delete (key: string): void {
    const entry = this.lists.get(key)
    if (entry === undefined) return
    this.lists.delete(key)
    this.bytes -= sizeOf(entry)
  }

  clear (): void {
    this.lists.clear()
    this.bytes = 0
  }
}

/** A list's size in memory, near enough: its bytes, and its Link header's. */
function sizeOf (list: CachedList): number {
  return list.body.length + 2 * (list.link?.length ?? 0)
}
