import { createHash } from 'node:crypto'
import { sql } from 'kysely'
import type { DbHandle, DbOrTrx } from '../index.js'
import { compiledInsert, compiledOnce } from '../compiled.js'
import type { AgentRow, AgentRowUpdate, AgentTable, NewAgentRow } from '../types.js'

export async function findAgent (db: DbOrTrx, widgetId: string, id: string): Promise<AgentRow | undefined> {
  return await findAgentQuery(db, widgetId, id).executeTakeFirst()
}

/** The query findAgent runs (the benchmarks show its plan). */
export function findAgentQuery (db: DbOrTrx, widgetId: string, id: string) {
  return db.selectFrom('agents').selectAll()
    .where('widget_id', '=', widgetId)
    .where('id', '=', id)
}

/** Every column of an agent row, by name (the compiler checks that none is missing). */
export const AGENT_COLUMNS = Object.keys({
  seq: true, id: true, widget_id: true, service_user_id: true, name: true, status: true, active: true, avatar_id: true,
  name_search: true, presence_expires_at: true, version: true, created_at: true, updated_at: true
} satisfies Record<keyof AgentTable, true>) as Array<keyof AgentTable>

/**
 * Agents by id, whatever their widget (the caller checks it): what BatchedAgentReads sends for reads
 * that arrive together, as a prepared statement with one parameter, the array of ids. Columns are
 * named rather than `*`: a PostgreSQL statement prepared as `select *` fails ("cached plan must not
 * change result type") once a newer instance's migration adds a column, so instances of two
 * versions could not run side by side.
 */
export function findAgentsByIdsPreparable (db: DbOrTrx, ids: string[]) {
  return db.selectFrom('agents').select(AGENT_COLUMNS).where(sql<boolean>`id = any(${ids})`)
}

export async function findAgentByServiceUserId (db: DbOrTrx, widgetId: string, serviceUserId: string): Promise<AgentRow | undefined> {
  // Compiled once (compiledOnce): every create and sync write asks it.
  const query = compiledOnce(db, 'findAgentByServiceUserId', [widgetId, serviceUserId], (v) =>
    db.selectFrom('agents').selectAll().where('widget_id', '=', v(0)).where('service_user_id', '=', v(1)))
  return (await db.executeQuery(query)).rows[0]
}

/** Runs a compiled query as a named prepared statement (DbHandle.prepared). */
type Prepared = NonNullable<DbHandle['prepared']>

export interface AgentFilter {
  status?: 'online' | 'offline'
  active?: boolean
  serviceUserId?: string
  /** LIKE pattern over name_search (see agents/search.ts). */
  namePattern?: string
  updatedSince?: number
  /** Keyset position: rows strictly after this one in list order. */
  after?: { createdAt: number, seq: number }
  limit?: number
}

/**
 * The widget's agents, newest first; agents created in the same second newest first too.
 * Keyset pagination on (created_at, seq), which never change, so pages stay correct while agents
 * are created or updated in between. Presence must be swept before filtering by status.
 */
export async function listAgents (db: DbOrTrx, widgetId: string, filter: AgentFilter = {}): Promise<AgentRow[]> {
  return await listAgentsQuery(db, widgetId, filter).execute()
}

/** The query listAgents runs (the benchmarks time it and show its plan). */
export function listAgentsQuery (db: DbOrTrx, widgetId: string, filter: AgentFilter = {}) {
  let q = db.selectFrom('agents').selectAll().where('widget_id', '=', widgetId)
  if (filter.status !== undefined) q = q.where('status', '=', filter.status)
  if (filter.active !== undefined) q = q.where('active', '=', filter.active ? 1 : 0)
  if (filter.serviceUserId !== undefined) q = q.where('service_user_id', '=', filter.serviceUserId)
  if (filter.namePattern !== undefined) q = q.where(sql<boolean>`name_search like ${filter.namePattern} escape '\\'`)
  if (filter.updatedSince !== undefined) q = q.where('updated_at', '>=', filter.updatedSince)
  const after = filter.after
  if (after !== undefined) {
    // Rows strictly after (c, s) in list order: `(created_at, seq) < (c, s)`, a row-value comparison
    // that PostgreSQL takes whole into the index condition (written as `created_at < c or seq < s`
    // it scanned and filtered the agents that share the cursor's second). The plain bound on
    // created_at lets SQLite start its index scan at the cursor; without a bound both databases
    // walked from the newest agent down to it.
    q = q.where('created_at', '<=', after.createdAt)
      .where(sql<boolean>`(created_at, seq) < (${after.createdAt}, ${after.seq})`)
  }
  q = q.orderBy('created_at', 'desc').orderBy('seq', 'desc')
  if (filter.limit !== undefined) q = q.limit(filter.limit)
  return q
}

/**
 * A listed row with its version tag (PostgreSQL): where that version of the row sits in the table
 * (`ctid`) and the transaction that wrote it (`xmin`). Every change to a row, through the service
 * or by hand, writes a new version with a new tag, and a tag is never given to another version.
 */
export type TaggedAgentRow = AgentRow & { row_tag: string }

const ROW_TAG = sql<string>`ctid::text || xmin::text`
/** When the database server started (ListedRowsCheck.server). */
const SERVER_START = sql<string>`pg_postmaster_start_time()::text`

/** PostgreSQL: listAgents, each row with its version tag (joinedTags, checkListedRows). */
export async function listAgentsTagged (db: DbOrTrx, widgetId: string, filter: AgentFilter): Promise<TaggedAgentRow[]> {
  return await listAgentsQuery(db, widgetId, filter).select(ROW_TAG.as('row_tag')).execute()
}

/** What checkListedRows finds, in one row. */
export interface ListedRowsCheck {
  /** The version tags of the rows listAgents would return now, joined by ';' (see checkListedRows). */
  tags: string
  /** Whether an agent of the widget is online by a heartbeat that has lapsed (it must be written offline first). */
  lapsed: boolean
  /** When the database server started: a restore from a backup restarts it, and may then hand out the same tags again. */
  server: string
}

/** checkListedRows' statements' names, by their SQL: one per set of filters (a few dozen at most). */
const checkStatementNames = new Map<string, string>()

/**
 * PostgreSQL: which versions of which rows listAgents would return now, without reading them (one
 * short row back, against up to a thousand rows of thirteen columns): tags equal to those of the
 * rows a list was made of mean the same versions of the same rows, so the same list (CheckedLists
 * keeps list answers on this). Compiled once per set of filters (compiledOnce) and, given
 * `prepared`, planned once per connection: this runs before every list answered from memory, and
 * its planning was most of its cost.
 */
export async function checkListedRows (db: DbOrTrx, widgetId: string, filter: AgentFilter, now: number, prepared?: Prepared): Promise<ListedRowsCheck> {
  const { active, after, ...rest } = filter
  const given = (Object.keys(rest) as Array<keyof typeof rest>).filter((k) => rest[k] !== undefined).sort()
  const values: unknown[] = [widgetId, now, ...given.map((k) => rest[k])]
  if (active !== undefined) values.push(active ? 1 : 0)
  if (after !== undefined) values.push(after.createdAt, after.seq)
  const key = `checkListedRows:${given.join(',')}:${active !== undefined}:${after !== undefined}`
  const query = compiledOnce(db, key, values, (v) => {
    let n = 2
    const standIns: AgentFilter = Object.fromEntries(given.map((k) => [k, v(n++)]))
    const activeAt = active === undefined ? -1 : n++
    if (after !== undefined) standIns.after = { createdAt: v(n++), seq: v(n++) }
    let rows = listAgentsQuery(db, v(0), standIns)
    if (activeAt >= 0) rows = rows.where('active', '=', v(activeAt))
    // Joined in the order the rows come (PostgreSQL keeps a sorted subquery's order, though it does
    // not promise to): tags that match are the same versions of the same rows, so the same list,
    // whatever order they came in; another order could only make a miss, never a stale answer.
    const listed = rows.clearSelect().select(ROW_TAG.as('tag'))
    return db.selectNoFrom((eb) => [
      eb.selectFrom(listed.as('listed')).select(sql<string>`coalesce(string_agg(tag, ';'), '')`.as('tags')).as('tags'),
      eb.exists(db.selectFrom('agents').select('seq').where('widget_id', '=', v(0)).where('status', '=', sql.lit('online')).where('presence_expires_at', '<=', v(1))).as('lapsed'),
      SERVER_START.as('server')
    ]).$castTo<ListedRowsCheck>()
  })
  if (prepared === undefined) return (await db.executeQuery(query)).rows[0] as ListedRowsCheck
  let name = checkStatementNames.get(query.sql)
  if (name === undefined) {
    name = `agentry_list_check_${createHash('sha256').update(query.sql).digest('hex').slice(0, 16)}`
    checkStatementNames.set(query.sql, name)
  }
  return (await prepared<ListedRowsCheck>(name, query))[0] as ListedRowsCheck
}

/** PostgreSQL: when the database server started (see ListedRowsCheck.server). */
export async function databaseServerStart (db: DbOrTrx): Promise<string> {
  const row = await db.selectNoFrom(SERVER_START.as('server')).executeTakeFirstOrThrow()
  return row.server
}

/** Joins the version tags of listed rows as checkListedRows does. */
export function joinedTags (rows: readonly TaggedAgentRow[]): string {
  return rows.map((row) => row.row_tag).join(';')
}

// Writes return the row's columns by name, not `*`: on PostgreSQL they run as prepared statements
// (pipelinedTransact), and a prepared `returning *` breaks once a newer instance's migration adds
// a column (see findAgentsByIdsPreparable).
export async function insertAgent (db: DbOrTrx, row: NewAgentRow): Promise<AgentRow> {
  // Compiled once per set of columns given (compiledOnce).
  const query = compiledInsert(db, 'agents', row, (values) => db.insertInto('agents').values(values).returning(AGENT_COLUMNS))
  const inserted = (await db.executeQuery(query)).rows[0]
  if (inserted === undefined) throw new Error('the insert returned no row')
  return inserted
}

/**
 * Updates the row only if it is still at `version`; undefined when someone else wrote first.
 * Compiled once per set of changed columns (the hottest write: compiledOnce).
 */
export async function updateAgentAtVersion (db: DbOrTrx, row: Pick<AgentRow, 'widget_id' | 'id' | 'version'>, changes: AgentRowUpdate): Promise<AgentRow | undefined> {
  const columns = (Object.keys(changes) as Array<keyof AgentRowUpdate>).filter((c) => changes[c] !== undefined && c !== 'version')
  const n = columns.length
  const values = [...columns.map((c) => changes[c]), row.version + 1, row.widget_id, row.id, row.version]
  const query = compiledOnce(db, `updateAgentAtVersion:${columns.join(',')}`, values, (v) =>
    db.updateTable('agents').set({ ...Object.fromEntries(columns.map((c, i) => [c, v(i)])), version: v(n) })
      .where('widget_id', '=', v(n + 1))
      .where('id', '=', v(n + 2))
      .where('version', '=', v(n + 3))
      .returning(AGENT_COLUMNS))
  return (await db.executeQuery(query)).rows[0]
}

export async function deleteAgentAtVersion (db: DbOrTrx, row: Pick<AgentRow, 'widget_id' | 'id' | 'version'>): Promise<boolean> {
  const result = await db.deleteFrom('agents')
    .where('widget_id', '=', row.widget_id)
    .where('id', '=', row.id)
    .where('version', '=', row.version)
    .executeTakeFirst()
  return Number(result.numDeletedRows) > 0
}

/** Agents online by heartbeat whose presence has lapsed by now (they are due to go offline). */
export async function findLapsedPresence (db: DbOrTrx, now: number, widgetId: string | undefined, limit: number): Promise<AgentRow[]> {
  let q = db.selectFrom('agents').selectAll()
    .where('status', '=', 'online')
    .where('presence_expires_at', '<=', now)
  if (widgetId !== undefined) q = q.where('widget_id', '=', widgetId)
  return await q.orderBy('presence_expires_at').limit(limit).execute()
}

/** When the next heartbeat of any agent lapses (unix seconds), if one is online by heartbeat. */
export async function nextPresenceLapse (db: DbOrTrx): Promise<number | undefined> {
  const row = await db.selectFrom('agents')
    .select((eb) => eb.fn.min<number | null>('presence_expires_at').as('at'))
    .where('status', '=', 'online')
    .executeTakeFirst()
  return row?.at ?? undefined
}

export async function countAvailable (db: DbOrTrx, widgetId: string, now: number): Promise<number> {
  const row = await db.selectFrom('agents')
    .select((eb) => eb.fn.countAll<number>().as('n'))
    .where('widget_id', '=', widgetId)
    .where('status', '=', 'online')
    .where('active', '=', 1)
    .where((eb) => eb.or([eb('presence_expires_at', 'is', null), eb('presence_expires_at', '>', now)]))
    .executeTakeFirstOrThrow()
  return Number(row.n)
}
