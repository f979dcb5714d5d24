import { sql, type Kysely } from 'kysely'
import type { DialectName } from '../index.js'

/**
 * PostgreSQL only: each token's request count in its current rate-limit window, added up by every
 * instance (see SharedRateCounts). Unlogged: a count is worth no WAL, and one lost in a crash only
 * restarts a window. On SQLite the counts are added up in a file of their own (see
 * rateWindowsFileOf).
 */
export function rateLimitWindows (dialect: DialectName) {
  return {
    async up (db: Kysely<unknown>): Promise<void> {
      if (dialect !== 'postgres') return
      await db.schema.createTable('rate_limit_windows')
        .modifyFront(sql`unlogged`)
        .addColumn('key', 'text', (c) => c.primaryKey())
        .addColumn('ends_at', 'bigint', (c) => c.notNull())
        .addColumn('count', 'bigint', (c) => c.notNull())
        .execute()
    },
    async down (db: Kysely<unknown>): Promise<void> {
      if (dialect !== 'postgres') return
      await db.schema.dropTable('rate_limit_windows').execute()
    }
  }
}
