import { sql, type RawBuilder } from 'kysely'
import type { DialectName } from './index.js'

// Claims one instance sets and the others read (the file collector's, the webhook sender's) are
// counted on the database's clock: on one clock, a deadline holds however far apart the instances'
// clocks are. Each reads it in its dialect's words.

/** Now, in unix seconds, by the database's clock. */
export function databaseSeconds (dialect: DialectName): RawBuilder<number> {
  return dialect === 'postgres' ? sql<number>`floor(extract(epoch from clock_timestamp()))::bigint` : sql<number>`unixepoch()`
}

/** Now, in unix milliseconds, by the database's clock. */
export function databaseMs (dialect: DialectName): RawBuilder<number> {
  return dialect === 'postgres'
    ? sql<number>`(extract(epoch from clock_timestamp()) * 1000)::bigint`
    : sql<number>`cast(unixepoch('subsec') * 1000 as integer)`
}
