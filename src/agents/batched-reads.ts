import type { AgentRow } from '../db/types.js'

/** At most this many ids in one query; more arriving together go in further queries, at the same time. */
const MAX_BATCH = 100

interface Waiting {
  widgetId: string
  id: string
  resolve: (row: AgentRow | undefined) => void
  reject: (err: unknown) => void
}

/**
 * Reads of one agent by id that arrive together, in the same turn of the event loop, go to the
 * database as one query (`id = any($1)`), each caller then taking its own row: one round trip and
 * one statement for many concurrent GETs, where PostgreSQL and its driver spend most of their
 * time per statement, not per row. A read is sent only after its request arrived, so it sees every
 * write acknowledged before then, as a query of its own would. A row of another widget is never
 * handed out (the widget is checked here, the query takes ids only). If the query fails, every
 * read of that batch fails with it.
 */
export class BatchedAgentReads {
  private waiting: Waiting[] = []
  private scheduled = false

  constructor (private readonly fetch: (ids: string[]) => Promise<AgentRow[]>) {}

  async find (widgetId: string, id: string): Promise<AgentRow | undefined> {
    return await new Promise((resolve, reject) => {
      this.waiting.push({ widgetId, id, resolve, reject })
      if (!this.scheduled) {
        this.scheduled = true
        // After the I/O callbacks of this turn: requests read in the same turn share a query.
        setImmediate(() => { this.flush() })
      }
    })
  }

  private flush (): void {
    this.scheduled = false
    const all = this.waiting
    this.waiting = []
    for (let i = 0; i < all.length; i += MAX_BATCH) void this.run(all.slice(i, i + MAX_BATCH))
  }

  private async run (batch: Waiting[]): Promise<void> {
    let rows: AgentRow[]
    try {
      rows = await this.fetch([...new Set(batch.map((w) => w.id))])
    } catch (err) {
      for (const w of batch) w.reject(err)
      return
    }
    const byId = new Map(rows.map((r) => [r.id, r]))
    for (const w of batch) {
      const row = byId.get(w.id)
      w.resolve(row !== undefined && row.widget_id === w.widgetId ? row : undefined)
    }
  }
}
