import { randomUUID } from 'node:crypto'
import type { Kysely } from 'kysely'
import type { AvatarService, StoredImage } from '../avatars/service.js'
import { timeOrderedName } from '../avatars/names.js'
import { isUniqueViolation, type Db, type DbHandle, type DbOrTrx, type DialectName, type Transact } from '../db/index.js'
import {
  AGENT_COLUMNS, checkListedRows, countAvailable, databaseServerStart, deleteAgentAtVersion, nextPresenceLapse, findAgent, findAgentByServiceUserId, findAgentsByIdsPreparable,
  findLapsedPresence, insertAgent, joinedTags, listAgents, listAgentsTagged, updateAgentAtVersion, type AgentFilter
} from '../db/repositories/agents.js'
import { deleteAvatar, findAvatar, findAvatarsByIds, insertAvatar } from '../db/repositories/avatars.js'
import { abandonedBlobClaims, blobClaimPending, claimBlobGc, clearBlobGc, dueBlobGc, endBlobClaim, scheduleBlobGc, unscheduleBlobGc } from '../db/repositories/blob-gc.js'
import type { AgentRow, AgentRowUpdate, AvatarRow, Database } from '../db/types.js'
import { AppError, errors } from '../errors/index.js'
import { setBounded } from '../util/bounded-map.js'
import { sha256 } from '../util/sha256.js'
import type { Agent, CreateAgentInput, ListQueryInput, UpdateAgentInput, UpsertAgentInput } from '../http/schemas/agent.js'
import { recordEvents, updateEvents, type NewEvent } from '../events/record.js'
import { BatchedAgentReads } from './batched-reads.js'
import type { CheckedLists, CheckedTicket } from './checked-lists.js'
import { decodeCursor, encodeCursor } from './cursor.js'
import type { AgentReadCache, AgentRepresentation, CachedList, ListTicket } from './read-cache.js'
import { containsPattern, searchableName } from './search.js'

/** Thrown inside a write's transaction when its row changed since it was read: rolled back, then tried again. */
class WrittenMeanwhile extends Error {}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
export const DEFAULT_PAGE_SIZE = 50
/** Agents read at a time for the unpaginated list (see listAll): ~0.5 MB of JSON with avatars. */
export const LIST_BATCH = 1000
/** Lapsed heartbeats read at a time, and written down at a time (see lapsePresence). */
const LAPSE_BATCH = 500
const LAPSES_TOGETHER = 50
/** Avatar records kept in memory (see avatarRow): a few hundred bytes each. */
const AVATAR_ROWS_KEPT = 10_000
/**
 * How long the file collector may take to delete one image's files (see maintain): it stops waiting
 * for the store after half of it, and a write that finds the claim waits for it at most this long.
 */
const COLLECT_DEADLINE_SECONDS = 60
/** Times a row found out of date (isStale) is read again before it is shown as it is. */
const STALE_REREADS = 5
/** How often a write waiting for another instance's collector looks whether it is done. */
const COLLECT_POLL_MS = 50

export type Clock = () => number
const unixSeconds: Clock = () => Math.floor(Date.now() / 1000)

export interface AgentServiceOptions {
  /** How long a heartbeat keeps an agent online. */
  presenceTtlSeconds: number
  /** How long unreferenced avatar content waits before its files are deleted. */
  blobGcGraceSeconds: number
  /**
   * SQLite runs one write transaction at a time, so events need no widget lock there; and the
   * database's clock is read in each dialect's words (the collector's claims).
   */
  dialect: DialectName
  /** How write transactions run (DbHandle.transact); a plain transaction by default. */
  transact?: Transact
  /** Answers reads of unchanged agents from memory; only where this instance sees every write. */
  readCache?: AgentReadCache
  /** Keeps list answers, each checked against the database before it is sent again (PostgreSQL). */
  checkedLists?: CheckedLists
  /**
   * How many agents' last shown JSON to keep (with its ETag once a GET needed one), reused while a
   * list, or a GET without a read cache, reads their row exactly as it was (0: none).
   */
  shownKept?: number
  /** Runs the hottest reads as prepared statements (DbHandle.prepared, PostgreSQL). */
  prepared?: DbHandle['prepared']
  /** Avatar records kept in memory at most (10,000 by default). */
  avatarRowsKept?: number
  /** Agents per batch of the unpaginated list (LIST_BATCH by default; tests use small ones). */
  listBatchSize?: number
  now?: Clock
  /** Tests only: runs when the file collector has claimed content, before it deletes the files (a throw: the deletion failed). */
  beforeCollect?: () => Promise<void>
}

/** An avatar given with a write: a URL to download, an uploaded file, or removal (null or ""). */
export type AvatarInput = { url: string } | { upload: Buffer } | null

export interface WriteOptions {
  /** The If-Match header: the write happens only if the agent's current ETag matches. */
  ifMatch?: string
  /** An uploaded file, in place of an avatar URL. */
  upload?: Buffer
}

export interface CreateOptions extends WriteOptions {
  /** Run in the create's own transaction, with the agent as answered: committed with it, or not at all. */
  alsoInTransaction?: (trx: DbOrTrx, agent: Agent) => Promise<void>
}

export interface Page {
  /** The page's agents, each as JSON text: what GET /agents/:id has as `data`. */
  items: string[]
  /** Null on the last page. */
  nextCursor: string | null
  limit: number
  /** With CheckedLists: the version tags of the rows read, for keepList. */
  tags?: string
}

/** One batch of the whole list (AgentService.listAll). */
export interface ListBatch {
  items: string[]
  /** False on the last batch. */
  more: boolean
  /** With CheckedLists: the version tags of the rows read, for keepList. */
  tags?: string
}

/**
 * Whether a row read again after the list (see listItems) still meets the list's filters, as
 * listAgents states them in SQL. Its place in the list (created_at, seq) never changes.
 */
function meetsFilters (row: AgentRow, query: Omit<ListQueryInput, 'limit' | 'cursor'>): boolean {
  return (query.status === undefined || row.status === query.status) &&
    (query.active === undefined || (row.active === 1) === query.active) &&
    (query.serviceUserId === undefined || row.service_user_id === query.serviceUserId) &&
    (query.q === undefined || row.name_search.includes(searchableName(query.q))) &&
    (query.updatedSince === undefined || row.updated_at >= query.updatedSince)
}

/** The list filters of a query, as listAgents takes them. */
function listFilter (query: Omit<ListQueryInput, 'limit' | 'cursor'>): AgentFilter {
  return {
    status: query.status,
    active: query.active,
    serviceUserId: query.serviceUserId,
    namePattern: query.q === undefined ? undefined : containsPattern(query.q),
    updatedSince: query.updatedSince
  }
}

/**
 * An agent as last shown: its row as shown (presence applied), its JSON, and that JSON with its
 * strong ETag once a GET has needed one (a list does not).
 */
interface Shown {
  readonly row: AgentRow
  readonly json: string
  representation: AgentRepresentation | undefined
}

const representations = new WeakMap<Agent, AgentRepresentation>()

/**
 * The agent's JSON and its strong ETag over it (equal JSON, equal tag), made once per agent object:
 * a write that keeps what it wrote in the read cache and the route that answers with it share one.
 */
export function representationOf (agent: Agent): AgentRepresentation {
  let representation = representations.get(agent)
  if (representation === undefined) {
    const json = JSON.stringify(agent)
    representation = { json, etag: etagOf(json) }
    representations.set(agent, representation)
  }
  return representation
}

function etagOf (json: string): string {
  return `"${sha256(json, 'base64url').slice(0, 32)}"`
}

/** A strong ETag over the agent's representation: equal JSON, equal tag. */
export function agentEtag (agent: Agent): string {
  return representationOf(agent).etag
}

/** True when an If-None-Match header value names this ETag (or is `*`): weak comparison, `W/` ignored (RFC 9110 13.1.2). */
export function etagMatches (header: string, etag: string): boolean {
  return header.split(',').map((t) => t.trim().replace(/^W\//, '')).some((t) => t === '*' || t === etag)
}

/** True when an If-Match header value names this ETag (or is `*`): strong comparison, a `W/` tag never matches (RFC 9110 13.1.1). */
export function ifMatchAccepts (header: string, etag: string): boolean {
  return header.split(',').map((t) => t.trim()).some((t) => t === '*' || t === etag)
}

interface Changes {
  /** Changes a client can see: they move updatedAt. */
  visible: AgentRowUpdate
  /** Bookkeeping only (presence expiry cleared): written, but updatedAt stays. */
  hidden: AgentRowUpdate
  image?: StoredImage
  removeAvatar: boolean
}

/**
 * The agent domain: the seed's four operations and what integrators need beyond them, scoped to
 * one widget, rows mapped to API shapes. Every write is conditional on the row's version, so
 * concurrent writers never lose each other's changes.
 */
export class AgentService {
  private readonly now: Clock
  private readonly dialect: DialectName
  private readonly cache: AgentReadCache | undefined
  private readonly checkedLists: CheckedLists | undefined
  private readonly transact: Transact
  /** transact, for a write that changes agents of this widget only (its lists alone are dropped); undefined: any widget. */
  private readonly transactIn: <T>(widgetId: string | undefined, fn: (trx: Kysely<Database>) => Promise<T>) => Promise<T>
  private readonly batchedReads: BatchedAgentReads | undefined
  private readonly avatarRows = new Map<string, AvatarRow>()
  /** Agents as last shown, by id: for lists, and for GETs without a read cache (see Shown). */
  private readonly shown = new Map<string, Shown>()
  /** The id of the agent last found for a serviceUserId, by widget (SQLite: see getRepresentationByServiceUserId). */
  private readonly idsByServiceUserId = new Map<string, string>()
  /**
   * Images whose content the file collector claimed while a write was making an avatar of it, with
   * until when the collector may be deleting the files (see maintain).
   */
  private readonly collectedMeanwhile = new WeakMap<StoredImage, number>()
  /** Content this instance's collector is working on (see maintain), by contentKey; ends when it is done. */
  private readonly collecting = new Map<string, Promise<void>>()

  constructor (
    private readonly db: Db,
    private readonly avatars: AvatarService,
    private readonly options: AgentServiceOptions
  ) {
    this.now = options.now ?? unixSeconds
    this.dialect = options.dialect
    this.cache = options.readCache
    this.checkedLists = options.checkedLists
    const transact: Transact = options.transact ?? (async (fn) => await db.transaction().execute(fn))
    const cache = this.cache
    // A write may change any list of its widget (a new agent, one renamed, one deleted): once it has
    // committed (or failed: no telling), the widget's lists kept from before are dropped; those of
    // every widget, for a write that names none (transact).
    this.transactIn = cache === undefined
      ? async (_widgetId, fn) => await transact(fn)
      : async (widgetId, fn) => { try { return await transact(fn) } finally { cache.changed(widgetId) } }
    this.transact = async (fn) => await this.transactIn(undefined, fn)
    const prepared = options.prepared
    if (prepared !== undefined) {
      // Compiled once: only the array of ids (its one parameter) changes from one batch to the next.
      const query = findAgentsByIdsPreparable(db, []).compile()
      this.batchedReads = new BatchedAgentReads(async (ids) => await prepared<AgentRow>('agentry_find_agents_v1', { ...query, parameters: [ids] }))
    }
  }

  /** One page of the (filtered) list: `limit` agents (DEFAULT_PAGE_SIZE by default) after the cursor, if any. */
  async page (widgetId: string, query: ListQueryInput = {}): Promise<Page> {
    const limit = query.limit ?? DEFAULT_PAGE_SIZE
    const filter = this.listedFilter(query)
    // Presence is decided in the database before filtering on status or updatedSince.
    await this.lapsePresence(widgetId)
    const { rows, tags } = await this.readListed(widgetId, filter)
    const page = rows.slice(0, limit)
    const last = page[page.length - 1]
    const nextCursor = rows.length > limit && last !== undefined ? encodeCursor({ createdAt: last.created_at, seq: last.seq }) : null
    return { items: await this.listItems(page, query), nextCursor, limit, tags }
  }

  /**
   * What a list request reads: a page (`limit` or `cursor` given) reads one row more than its limit
   * (so it knows whether there is a next page); the whole list reads its first batch so.
   */
  private listedFilter (query: ListQueryInput): AgentFilter {
    const { limit, cursor, ...filters } = query
    if (limit === undefined && cursor === undefined) return { ...listFilter(filters), limit: (this.options.listBatchSize ?? LIST_BATCH) + 1 }
    const after = cursor === undefined ? undefined : decodeCursor(cursor)
    return { ...listFilter(filters), after, limit: (limit ?? DEFAULT_PAGE_SIZE) + 1 }
  }

  /** listAgents, and with CheckedLists the version tags of the rows read. */
  private async readListed (widgetId: string, filter: AgentFilter): Promise<{ rows: AgentRow[], tags: string | undefined }> {
    if (this.checkedLists === undefined) return { rows: await listAgents(this.db, widgetId, filter), tags: undefined }
    const rows = await listAgentsTagged(this.db, widgetId, filter)
    return { rows, tags: joinedTags(rows) }
  }

  /**
   * The whole (filtered) list, newest first, as the seed's unpaginated GET /agents gives it: read in
   * batches of LIST_BATCH agents one after the other (keyset, like cursor pages), so memory stays
   * bounded however long the roster and other requests are answered between batches. Every agent
   * that exists throughout appears exactly once; one created or deleted meanwhile may or may not.
   * `more` is false on the last batch (which may be the first).
   */
  async * listAll (widgetId: string, query: Omit<ListQueryInput, 'limit' | 'cursor'> = {}): AsyncGenerator<ListBatch> {
    const batch = this.options.listBatchSize ?? LIST_BATCH
    // Each batch is read as listedFilter says for the whole list (after the last batch's end), so the
    // first batch's tags are what checkedList checks.
    const filter = this.listedFilter(query)
    await this.lapsePresence(widgetId)
    let after: AgentFilter['after']
    for (;;) {
      const { rows, tags } = await this.readListed(widgetId, { ...filter, after })
      const more = rows.length > batch
      const items = await this.listItems(more ? rows.slice(0, batch) : rows, query)
      yield { items, more, tags }
      if (!more) return
      const last = rows[batch - 1] as AgentRow
      after = { createdAt: last.created_at, seq: last.seq }
      // Let other requests in: on loopback, say, the socket may take every batch at once, and the next
      // one would be read without the event loop ever turning (the SQLite driver is synchronous).
      await new Promise((resolve) => setImmediate(resolve))
    }
  }

  /**
   * The answer to GET /agents kept for this widget and query (`key`), if nothing was written since
   * and no heartbeat has lapsed meanwhile (SQLite's read cache). `countMiss` false: a miss is not
   * counted (the caller declines, and the usual way looks again).
   */
  cachedList (widgetId: string, key: string, countMiss = true): CachedList | undefined {
    return this.cache?.getList(widgetId, key, this.now(), countMiss)
  }

  /**
   * The answer to GET /agents kept for this widget and query (`key`, made of `query`), if the rows it
   * was made of are still exactly those the query reads now and no heartbeat of the widget has lapsed
   * (PostgreSQL's CheckedLists: one short query instead of reading the rows). `countMiss` as for
   * cachedList.
   */
  async checkedList (widgetId: string, key: string, query: ListQueryInput, countMiss = true): Promise<CachedList | undefined> {
    const lists = this.checkedLists
    const entry = lists?.candidate(widgetId, key, countMiss)
    if (lists === undefined || entry === undefined) return undefined
    const check = await checkListedRows(this.db, widgetId, this.listedFilter(query), this.now(), this.options.prepared)
    return lists.checked(widgetId, key, entry, check, countMiss)
  }

  /** Whether checkedList has an answer to check for this widget and query (PostgreSQL; nothing counted). */
  keepsCheckedList (widgetId: string, key: string): boolean {
    return this.checkedLists?.candidate(widgetId, key, false) !== undefined
  }

  /** Take one before reading a list of the widget, and hand it to keepList(): it refuses what a write overtook. */
  listTicket (widgetId: string): ListTicket | CheckedTicket | undefined {
    return this.cache?.listTicket(widgetId) ?? this.checkedLists?.ticket()
  }

  /**
   * Keeps an answer to GET /agents: on SQLite for cachedList(), until the next heartbeat of any agent
   * lapses; on PostgreSQL for checkedList(), with the version tags of the rows it was made of.
   */
  async keepList (widgetId: string, key: string, list: CachedList, ticket: ListTicket | CheckedTicket | undefined, tags?: string): Promise<void> {
    if (ticket === undefined) return
    if (this.cache !== undefined && 'widgetEpoch' in ticket) {
      const lapse = await nextPresenceLapse(this.db)
      this.cache.setList(widgetId, key, list, lapse ?? Number.POSITIVE_INFINITY, ticket)
    } else if (this.checkedLists !== undefined && 'generation' in ticket && tags !== undefined) {
      // The first list of a process is not kept: what it read is only known to be from this
      // database server once the server's start is.
      if (!this.checkedLists.knowsServer) this.checkedLists.learnServer(await databaseServerStart(this.db))
      else this.checkedLists.set(widgetId, key, list, tags, ticket)
    }
  }

  /** The agent as JSON with its ETag, for GET /agents/:id: from the read cache when it has it. */
  async getRepresentation (widgetId: string, id: string): Promise<AgentRepresentation> {
    const now = this.now()
    const cached = this.cache?.get(widgetId, id.toLowerCase(), now)
    if (cached !== undefined) return cached
    const ticket = this.cache?.ticket()
    return await this.representationOfRow(await this.mustFind(widgetId, id), now, ticket, async () => await this.mustFind(widgetId, id))
  }

  /**
   * The agent with this serviceUserId as JSON with its ETag, for GET /agents/by-service-user-id/:id.
   * The id last found for it is remembered: when the read cache holds that agent (as fresh as any
   * entry there, see AgentReadCache) and it still has this serviceUserId, it is the one (unique in a
   * widget), answered with no query. Otherwise, and on PostgreSQL, it is read as before.
   */
  async getRepresentationByServiceUserId (widgetId: string, serviceUserId: string): Promise<AgentRepresentation> {
    const now = this.now()
    const key = `${widgetId}\n${serviceUserId}`
    const known = this.idsByServiceUserId.get(key)
    if (known !== undefined) {
      const cached = this.cache?.get(widgetId, known, now)
      if (cached !== undefined && cached.row.service_user_id === serviceUserId) return cached
    }
    const ticket = this.cache?.ticket()
    const stored = await findAgentByServiceUserId(this.db, widgetId, serviceUserId)
    if (stored === undefined) throw notFoundByServiceUserId(serviceUserId)
    if (this.cache !== undefined) setBounded(this.idsByServiceUserId, key, stored.id.toLowerCase(), this.options.shownKept ?? 0)
    return await this.representationOfRow(stored, now, ticket, async () => {
      const again = await findAgentByServiceUserId(this.db, widgetId, serviceUserId)
      if (again === undefined) throw notFoundByServiceUserId(serviceUserId)
      return again
    })
  }

  /**
   * An agent's row as read, made into what the API shows (kept in the read cache under `ticket`, or
   * remembered as shown). A row whose avatar record is gone is out of date (see isStale): it is read
   * again with `reread`.
   */
  private async representationOfRow (first: AgentRow, now: number, ticket: number | undefined, reread: () => Promise<AgentRow>): Promise<AgentRepresentation> {
    let stored = first
    let current = effective(stored, now)
    let avatar: AvatarRow | undefined
    for (let again = 0; ; again++) {
      // No read cache (PostgreSQL): the row is read every time, but made into JSON and hashed for its
      // ETag only when it differs from the last one shown (field by field, whatever changed it).
      if (this.cache === undefined) {
        const last = this.shown.get(stored.id)
        if (last !== undefined && sameRow(last.row, current)) return (last.representation ??= { json: last.json, etag: etagOf(last.json) })
      }
      avatar = current.avatar_id === null ? undefined : await this.avatarRow(current.avatar_id)
      if (!isStale(current, avatar) || again >= STALE_REREADS) break
      stored = await reread()
      current = effective(stored, now)
    }
    const representation = representationOf(this.shapeAt(current, avatar, now))
    if (ticket !== undefined) this.cache?.set(stored.widget_id, stored.id.toLowerCase(), { ...representation, row: stored }, cachedUntil(stored), ticket)
    else this.rememberShown(current, avatar, representation.json, representation)
    return representation
  }

  /**
   * Keeps the agent as just shown (its row as shown, and the avatar record that row refers to), not
   * when that record was gone (deleted by a write after the row was read).
   */
  private rememberShown (row: AgentRow, avatar: AvatarRow | undefined, json: string, representation: AgentRepresentation | undefined): void {
    const kept = this.options.shownKept ?? 0
    if (kept > 0 && (row.avatar_id === null || avatar !== undefined)) setBounded(this.shown, row.id, { row, json, representation }, kept)
  }

  /**
   * The agent as getRepresentation would answer it, if the read cache has it: synchronous, for the
   * in-memory answer to GET /agents/:id (src/http/fast-path.ts). A miss is not counted: the request
   * then goes the usual way, which looks again.
   */
  cachedRepresentation (widgetId: string, id: string): AgentRepresentation | undefined {
    return this.cache?.get(widgetId, id.toLowerCase(), this.now(), false)
  }

  /** After a committed write of this row: the cache drops what it had and keeps what was written. */
  private wrote (row: AgentRow, agent: Agent): void {
    if (this.cache === undefined) return
    this.cache.invalidate(row.widget_id, row.id)
    this.cache.set(row.widget_id, row.id, { ...representationOf(agent), row }, cachedUntil(row), this.cache.ticket())
  }

  /** The row a write starts from: the cached one (exact, see AgentReadCache) unless fresh is asked for. */
  private async findForWrite (widgetId: string, id: string, fresh: boolean): Promise<AgentRow> {
    const cached = fresh ? undefined : this.cache?.get(widgetId, id.toLowerCase(), this.now())
    return cached?.row ?? await this.mustFind(widgetId, id)
  }

  async create (widgetId: string, input: CreateAgentInput, options: CreateOptions = {}): Promise<Agent> {
    const avatar = avatarInput(input.avatar, options.upload)
    // Checked before the avatar download so a duplicate costs nothing; the unique index decides races.
    await this.mustBeFreeServiceUserId(widgetId, input.serviceUserId)
    const image = avatar === null ? undefined : await this.ingest(avatar)
    return await this.writeWithImage(image, async () => await this.insert(widgetId, input, image, options.alsoInTransaction))
  }

  /** Changes only the fields given; a request that changes nothing leaves updatedAt as it was. */
  async update (widgetId: string, id: string, input: UpdateAgentInput, options: WriteOptions = {}): Promise<Agent> {
    const avatar = input.avatar === undefined && options.upload === undefined ? undefined : avatarInput(input.avatar, options.upload)
    const image = avatar === undefined || avatar === null ? undefined : await this.ingest(avatar)
    return await this.writeWithImage(image, async () =>
      await this.applyUpdate(async (retry) => await this.findForWrite(widgetId, id, retry), input, avatar === null, image, options.ifMatch))
  }

  /**
   * Creates or updates the agent with this serviceUserId, idempotently: the same input again changes
   * nothing. An unchanged avatar URL is not downloaded again unless refreshAvatar is set.
   */
  async upsertByServiceUserId (
    widgetId: string, serviceUserId: string, input: UpsertAgentInput, options: WriteOptions & { refreshAvatar?: boolean } = {}
  ): Promise<{ agent: Agent, created: boolean }> {
    if (input.serviceUserId !== undefined && input.serviceUserId !== serviceUserId) {
      throw errors.validation([{ field: 'serviceUserId', message: 'must equal the serviceUserId in the path (or be left out)' }])
    }
    const existing = await findAgentByServiceUserId(this.db, widgetId, serviceUserId)
    if (existing === undefined) {
      // If-Match (`*` included) asks for an agent that exists: it never creates one (RFC 9110 13.1.1).
      if (options.ifMatch !== undefined) throw errors.preconditionFailed()
      if (input.name === undefined) throw errors.validation([{ field: 'name', message: 'is required to create an agent' }])
      try {
        return { agent: await this.create(widgetId, { ...input, serviceUserId, name: input.name }, options), created: true }
      } catch (err) {
        // Another sync created it meanwhile: fall through to updating it.
        if (!(err instanceof AppError && err.code === 'service_user_id_taken')) throw err
      }
    }
    let avatar = input.avatar === undefined && options.upload === undefined ? undefined : avatarInput(input.avatar, options.upload)
    if (avatar !== undefined && avatar !== null && 'url' in avatar && options.refreshAvatar !== true) {
      // The row read above, unless a concurrent sync created it since.
      const current = existing ?? await findAgentByServiceUserId(this.db, widgetId, serviceUserId)
      const currentAvatar = current?.avatar_id == null ? undefined : await this.avatarRow(current.avatar_id)
      if (currentAvatar?.source_url === avatar.url) avatar = undefined
    }
    const image = avatar === undefined || avatar === null ? undefined : await this.ingest(avatar)
    const agent = await this.writeWithImage(image, async () => await this.applyUpdate(async () => {
      const row = await findAgentByServiceUserId(this.db, widgetId, serviceUserId)
      if (row === undefined) throw notFoundByServiceUserId(serviceUserId)
      return row
    }, { ...input, avatar: undefined }, avatar === null, image, options.ifMatch))
    return { agent, created: false }
  }

  /** Deletes the agent; its avatar files go once no other avatar refers to their content. */
  async delete (widgetId: string, id: string, options: Pick<WriteOptions, 'ifMatch'> = {}): Promise<Agent> {
    for (let attempt = 0; ; attempt++) {
      const row = await this.mustFind(widgetId, id)
      const avatar = row.avatar_id === null ? undefined : await this.avatarRow(row.avatar_id)
      if (isStale(row, avatar) && attempt < STALE_REREADS) continue
      const now = this.now()
      const agent = this.shapeAt(row, avatar, now)
      if (options.ifMatch !== undefined && !ifMatchAccepts(options.ifMatch, agentEtag(agent))) throw errors.preconditionFailed()
      const deleted = await this.transactIn(widgetId, async (trx) => {
        if (!await deleteAgentAtVersion(trx, row)) return false
        if (row.avatar_id !== null) await this.dropAvatar(trx, row.avatar_id)
        // A lapsed heartbeat not yet written down gets its events first (as with any write): a
        // listener that follows status changes sees the agent go offline before it goes.
        await this.record(trx, widgetId, [...updateEvents(this.rawShape(row, avatar), agent), { type: 'agent.deleted', agent, changes: {} }], now)
        return true
      })
      if (deleted) {
        this.cache?.invalidate(widgetId, row.id)
        return agent
      }
      // Written meanwhile: read again (and with If-Match, compare again).
    }
  }

  /** Marks the agent online until now + presenceTtlSeconds; it goes offline by itself when beats stop. */
  async heartbeat (widgetId: string, id: string): Promise<{ agent: Agent, onlineUntil: number }> {
    for (;;) {
      const now = this.now()
      const stored = await this.mustFind(widgetId, id)
      const row = effective(stored, now)
      const onlineUntil = now + this.options.presenceTtlSeconds
      const changes: AgentRowUpdate = { status: 'online', presence_expires_at: onlineUntil }
      if (row.status !== 'online') changes.updated_at = laterOf(now, row)
      const avatar = row.avatar_id === null ? undefined : await this.avatarRow(row.avatar_id)
      const agent = await this.transactIn(widgetId, async (trx) => {
        const updated = await updateAgentAtVersion(trx, row, changes)
        if (updated === undefined) return undefined
        // Shown as of the write's `now`, as are its events: a heartbeat answered after its own expiry
        // (it waited for the database) still wrote online, and the lapse after it is its own change.
        const after = this.shapeAt(updated, avatar, now)
        await this.record(trx, widgetId, [...updateEvents(this.rawShape(stored, avatar), this.shapeAt(row, avatar, now)), ...updateEvents(this.shapeAt(row, avatar, now), after)], now)
        return after
      })
      if (agent !== undefined) {
        this.cache?.invalidate(widgetId, row.id)
        return { agent, onlineUntil }
      }
    }
  }

  /** The widget's question in one call: how many agents are online and active, and is anyone. */
  async availability (widgetId: string): Promise<{ online: number, available: boolean }> {
    const online = await countAvailable(this.db, widgetId, this.now())
    return { online, available: online > 0 }
  }

  /**
   * Periodic upkeep, safe on every instance at once: lapse presence, delete unreferenced avatar files.
   *
   * Content is collected in three steps: a transaction claims it (takes it off the schedule if no
   * avatar refers to it, and records the claim with a deadline); then its files are deleted, outside
   * any transaction, so neither SQLite's one connection nor a PostgreSQL one waits for the store
   * (a bucket's round trips); then the claim is ended. A write that makes an avatar of the same
   * content takes it off the schedule in its own transaction, which therefore comes wholly before
   * the claim (which then fails: the content is referred to) or after it (and then finds the claim).
   * Finding it, the write waits until the collector is done (or its deadline passed) and puts the
   * files back before it answers. Without this, an ingest that found the files still there could
   * commit its row just as they were deleted.
   *
   * A collector that stops on the way (the process killed) leaves its claim unended: once its
   * deadline has passed, the content goes back on the schedule, to be collected after the grace
   * unless an avatar refers to it by then.
   */
  async maintain (): Promise<{ expired: number, filesCollected: number }> {
    const now = this.now()
    const expired = await this.lapsePresence()
    for (const abandoned of await abandonedBlobClaims(this.db, this.dialect, 100)) await this.giveUpClaim(abandoned.sha256, abandoned.ext)
    let filesCollected = 0
    for (const due of await dueBlobGc(this.db, now, 100)) {
      const key = contentKey(due.sha256, due.ext)
      let done = (): void => {}
      // Before the claim: a write of this instance that finds the claim finds this too.
      this.collecting.set(key, new Promise<void>((resolve) => { done = resolve }))
      try {
        if (await this.collect(due.sha256, due.ext, now)) filesCollected++
      } finally {
        this.collecting.delete(key)
        done()
      }
    }
    return { expired, filesCollected }
  }

  /** Claims due content, deletes its files and ends the claim (see maintain); false if it was referred to again. */
  private async collect (sha256: string, ext: string, now: number): Promise<boolean> {
    const claimed = await this.transact(async (trx) => {
      if (await claimBlobGc(trx, this.dialect, sha256, ext, now, COLLECT_DEADLINE_SECONDS)) return true
      // Referred to again: off the schedule (unless rescheduled meanwhile, for later).
      await clearBlobGc(trx, sha256, ext, now)
      return false
    })
    if (!claimed) return false
    try {
      await this.options.beforeCollect?.()
      await this.avatars.deleteFiles(sha256, ext, AbortSignal.timeout(COLLECT_DEADLINE_SECONDS * 500))
    } catch (err) {
      // Some files may be left: back on the schedule, for a later pass.
      await this.giveUpClaim(sha256, ext)
      throw err
    }
    await this.transact(async (trx) => { await endBlobClaim(trx, sha256, ext) })
    return true
  }

  /**
   * Ends a claim whose files may not all be gone (the deletion failed, or its collector stopped):
   * the content goes back on the schedule after the grace, as for content whose last avatar just
   * went, since a write that found the claim may be about to commit (see README, "Presence, file
   * collection").
   */
  private async giveUpClaim (sha256: string, ext: string): Promise<void> {
    await this.transact(async (trx) => {
      await scheduleBlobGc(trx, sha256, ext, this.now() + this.options.blobGcGraceSeconds)
      await endBlobClaim(trx, sha256, ext)
    })
  }

  /**
   * A write made an avatar of content the collector had claimed: waits until the collector is done
   * deleting its files (its deadline at most), so that they can be put back.
   */
  private async collectionEnded (image: StoredImage, deletingUntil: number): Promise<void> {
    // The deadline is judged by the database's clock, the one the collector set it by: this
    // instance's clock may be well ahead of the collector's.
    if (deletingUntil === 0) return
    while (await blobClaimPending(this.db, this.dialect, image.sha256, image.ext)) {
      const here = this.collecting.get(contentKey(image.sha256, image.ext))
      if (here !== undefined) await here
      else await new Promise((resolve) => setTimeout(resolve, COLLECT_POLL_MS))
    }
  }

  /**
   * Agents online by heartbeat whose presence lapsed go offline, stamped with the moment they
   * lapsed, each with its events. Conditional on the row's version, so every instance may run it.
   * Every one of them, read LAPSE_BATCH at a time: a list filters on the status written down.
   */
  private async lapsePresence (widgetId?: string): Promise<number> {
    const now = this.now()
    let lapsed = 0
    for (;;) {
      const found = await findLapsedPresence(this.db, now, widgetId, LAPSE_BATCH)
      lapsed += await this.lapseEach(found, now)
      // Each one found is written down now (by this write or another's), so the next batch is new.
      if (found.length < LAPSE_BATCH) return lapsed
    }
  }

  /** Writes the lapses down, LAPSES_TOGETHER of one widget's agents to a transaction; how many were written. */
  private async lapseEach (found: readonly AgentRow[], now: number): Promise<number> {
    const byWidget = new Map<string, AgentRow[]>()
    for (const row of found) {
      const rows = byWidget.get(row.widget_id)
      if (rows === undefined) byWidget.set(row.widget_id, [row])
      else rows.push(row)
    }
    let lapsed = 0
    for (const [widgetId, rows] of byWidget) {
      for (let i = 0; i < rows.length; i += LAPSES_TOGETHER) lapsed += await this.lapseTogether(widgetId, rows.slice(i, i + LAPSES_TOGETHER), now)
    }
    return lapsed
  }

  /**
   * Writes down the lapses of some of a widget's agents in one transaction (one commit, and on
   * PostgreSQL one turn of the widget's event writers), each with its events unless its agent was
   * written meanwhile; how many were written.
   */
  private async lapseTogether (widgetId: string, rows: readonly AgentRow[], now: number): Promise<number> {
    const avatars = await Promise.all(rows.map(async (stored) => stored.avatar_id === null ? undefined : await this.avatarRow(stored.avatar_id)))
    const written = await this.transactIn(widgetId, async (trx) => {
      // Issued together: one round trip on PostgreSQL (pipelinedTransact).
      const updated = await Promise.all(rows.map(async (stored) => {
        const current = effective(stored, now)
        return await updateAgentAtVersion(trx, stored, { status: current.status, updated_at: current.updated_at, presence_expires_at: null })
      }))
      const events = rows.flatMap((stored, i) => {
        const row = updated[i]
        return row === undefined ? [] : updateEvents(this.rawShape(stored, avatars[i]), this.shapeAt(row, avatars[i], now))
      })
      await this.record(trx, widgetId, events, now)
      return rows.filter((_, i) => updated[i] !== undefined)
    })
    for (const stored of written) this.cache?.invalidate(widgetId, stored.id)
    return written.length
  }

  private async record (trx: DbOrTrx, widgetId: string, events: readonly NewEvent[], now: number): Promise<void> {
    await recordEvents(trx, widgetId, events, now, this.dialect === 'sqlite')
  }

  private async ingest (avatar: NonNullable<AvatarInput>): Promise<StoredImage> {
    return 'url' in avatar ? await this.avatars.ingestUrl(avatar.url) : await this.avatars.ingestUpload(avatar.upload)
  }

  /**
   * Runs the write that follows an ingest. The files are stored before the row that refers to them,
   * so a write that then fails (no such agent, If-Match not met, the serviceUserId taken meanwhile)
   * would leave them behind: their content goes to the file collector instead, which removes them
   * after AVATAR_GC_GRACE_SECONDS unless an avatar refers to that content by then.
   */
  private async writeWithImage<T> (image: StoredImage | undefined, write: () => Promise<T>): Promise<T> {
    let result: T
    try {
      result = await write()
    } catch (err) {
      if (image !== undefined) {
        const eligibleAt = this.now() + this.options.blobGcGraceSeconds
        // Best effort: the caller hears about the write's failure, not this one's.
        await this.transact(async (trx) => { await scheduleBlobGc(trx, image.sha256, image.ext, eligibleAt) }).catch(() => {})
      }
      throw err
    }
    // The collector deleted (or is deleting) this content's files while the write was on its way (see maintain).
    const deletingUntil = image === undefined ? undefined : this.collectedMeanwhile.get(image)
    if (image !== undefined && deletingUntil !== undefined) {
      this.collectedMeanwhile.delete(image)
      await this.collectionEnded(image, deletingUntil)
      await this.avatars.putBack(image)
    }
    return result
  }

  private async insert (widgetId: string, input: CreateAgentInput, image: StoredImage | undefined, alsoInTransaction?: CreateOptions['alsoInTransaction']): Promise<Agent> {
    const now = this.now()
    try {
      return await this.transactIn(widgetId, async (trx) => {
        const avatar = image === undefined ? undefined : this.newAvatarRow(widgetId, image, now)
        // Issued together (one round trip on PostgreSQL: pipelinedTransact), the avatar's row first:
        // the agent's refers to it.
        const [, row] = await Promise.all([avatar === undefined ? undefined : this.insertAvatarRow(trx, avatar, image as StoredImage), insertAgent(trx, {
          id: randomUUID(),
          widget_id: widgetId,
          service_user_id: input.serviceUserId,
          name: input.name,
          name_search: searchableName(input.name),
          status: input.status ?? 'offline',
          active: (input.active ?? true) ? 1 : 0,
          avatar_id: avatar?.id ?? null,
          presence_expires_at: null,
          created_at: now,
          updated_at: now
        })])
        const agent = this.shapeAt(row, avatar, now)
        await alsoInTransaction?.(trx, agent)
        await this.record(trx, widgetId, [{ type: 'agent.created', agent, changes: {} }], now)
        return agent
      })
    } catch (err) {
      if (isUniqueViolation(err)) throw errors.serviceUserIdTaken(input.serviceUserId)
      throw err
    }
  }

  /**
   * Reads the row, works out what changes, writes it if the row is still as read; retries otherwise,
   * reading the database itself (`load(true)`).
   */
  private async applyUpdate (
    load: (retry: boolean) => Promise<AgentRow>, input: UpdateAgentInput, removeAvatar: boolean, image: StoredImage | undefined, ifMatch: string | undefined
  ): Promise<Agent> {
    for (let attempt = 0; ; attempt++) {
      const now = this.now()
      const stored = await load(attempt > 0)
      const current = effective(stored, now)
      const currentAvatar = current.avatar_id === null ? undefined : await this.avatarRow(current.avatar_id)
      if (isStale(current, currentAvatar) && attempt < STALE_REREADS) continue
      if (ifMatch !== undefined && !ifMatchAccepts(ifMatch, agentEtag(this.shapeAt(current, currentAvatar, now)))) throw errors.preconditionFailed()

      const changes = await this.changesFor(current, currentAvatar, input, removeAvatar, image)
      // A lapsed heartbeat is written down with any other change, so the row says what the API said.
      if (stored.status !== current.status) Object.assign(changes.hidden, { status: current.status, updated_at: current.updated_at, presence_expires_at: null })
      const visible = Object.keys(changes.visible).length > 0 || changes.image !== undefined || changes.removeAvatar
      if (!visible && Object.keys(changes.hidden).length === 0) return this.shapeAt(current, currentAvatar, now)

      try {
        const result = await this.transactIn(current.widget_id, async (trx) => {
          let avatar = currentAvatar
          const update: AgentRowUpdate = { ...changes.hidden, ...changes.visible }
          const newAvatar = changes.image === undefined ? undefined : this.newAvatarRow(current.widget_id, changes.image, now)
          if (newAvatar !== undefined) {
            avatar = newAvatar
            update.avatar_id = newAvatar.id
          } else if (changes.removeAvatar) {
            avatar = undefined
            update.avatar_id = null
          }
          if (visible) update.updated_at = laterOf(now, current)
          // Issued together (one round trip on PostgreSQL), the new avatar's row first: the agent's refers to it.
          const [, row] = await Promise.all([
            newAvatar === undefined ? undefined : this.insertAvatarRow(trx, newAvatar, changes.image as StoredImage),
            updateAgentAtVersion(trx, stored, update)
          ])
          // Rolled back, the new avatar's row with it, and tried again.
          if (row === undefined) throw new WrittenMeanwhile('the agent was written meanwhile')
          if (currentAvatar !== undefined && update.avatar_id !== undefined) await this.dropAvatar(trx, currentAvatar.id, currentAvatar)
          // All as of the write's `now`: a presence that lapses while the write is on its way is not
          // written down by it, so its events must not be either (the next write or upkeep does both).
          const before = this.shapeAt(current, currentAvatar, now)
          const after = this.shapeAt(row, avatar, now)
          // A lapse written down here gets its events first, then the change itself.
          await this.record(trx, current.widget_id, [...updateEvents(this.rawShape(stored, currentAvatar), before), ...updateEvents(before, after)], now)
          return { row, after }
        })
        this.wrote(result.row, result.after)
        return result.after
      } catch (err) {
        if (!(err instanceof WrittenMeanwhile)) {
          if (isUniqueViolation(err) && changes.visible.service_user_id != null) throw errors.serviceUserIdTaken(changes.visible.service_user_id)
          throw err
        }
      }
      // Someone else wrote first: read again (and with If-Match, compare again: a write that changed
      // nothing the API shows, a heartbeat of an agent online, leaves the ETag as it was).
    }
  }

  private async changesFor (
    current: AgentRow, currentAvatar: AvatarRow | undefined, input: UpdateAgentInput, removeAvatar: boolean, image: StoredImage | undefined
  ): Promise<Changes> {
    const visible: AgentRowUpdate = {}
    const hidden: AgentRowUpdate = {}
    if (input.serviceUserId !== undefined && input.serviceUserId !== current.service_user_id) {
      await this.mustBeFreeServiceUserId(current.widget_id, input.serviceUserId)
      visible.service_user_id = input.serviceUserId
    }
    if (input.name !== undefined && input.name !== current.name) {
      visible.name = input.name
      visible.name_search = searchableName(input.name)
    }
    if (input.status !== undefined) {
      if (input.status !== current.status) visible.status = input.status
      // A status set directly holds until it is changed: it ends any heartbeat expiry.
      if (current.presence_expires_at !== null) hidden.presence_expires_at = null
    }
    if (input.active !== undefined && (input.active ? 1 : 0) !== current.active) visible.active = input.active ? 1 : 0
    return {
      visible,
      hidden,
      // The same picture again (same bytes after processing) is no change.
      image: image !== undefined && currentAvatar?.sha256 === image.sha256 ? undefined : image,
      removeAvatar: removeAvatar && currentAvatar !== undefined
    }
  }

  private async mustFind (widgetId: string, id: string): Promise<AgentRow> {
    const row = UUID.test(id) ? await this.findById(widgetId, id.toLowerCase()) : undefined
    if (row === undefined) throw errors.agentNotFound(id)
    return row
  }

  /**
   * One agent by id. On PostgreSQL with reads that arrive together batched into one query, run as a
   * prepared statement (half the database's CPU of a plain query).
   */
  private async findById (widgetId: string, id: string): Promise<AgentRow | undefined> {
    if (this.batchedReads === undefined) return await findAgent(this.db, widgetId, id)
    return await this.batchedReads.find(widgetId, id)
  }

  private async mustBeFreeServiceUserId (widgetId: string, serviceUserId: string): Promise<void> {
    if (await findAgentByServiceUserId(this.db, widgetId, serviceUserId) !== undefined) {
      throw errors.serviceUserIdTaken(serviceUserId)
    }
  }

  /** The avatar record of a stored image, as a write will insert it (insertAvatarRow). */
  private newAvatarRow (widgetId: string, image: StoredImage, now: number): AvatarRow {
    return {
      id: randomUUID(),
      widget_id: widgetId,
      sha256: image.sha256,
      ext: image.ext,
      mime_type: image.mimeType,
      size: image.size,
      width: image.width,
      height: image.height,
      name: timeOrderedName(),
      source_url: image.sourceUrl,
      created_at: now,
      updated_at: now
    }
  }

  private async insertAvatarRow (trx: DbOrTrx, row: AvatarRow, image: StoredImage): Promise<void> {
    // Issued together (one round trip on PostgreSQL: pipelinedTransact), the unscheduling first, so
    // that a collector holding this content is waited for (see maintain).
    const [claim] = await Promise.all([unscheduleBlobGc(trx, image.sha256, image.ext), insertAvatar(trx, row)])
    if (claim.claimed) this.collectedMeanwhile.set(image, claim.deletingUntil)
  }

  /** Deletes an avatar record and queues its content for collection once nothing refers to it. */
  private async dropAvatar (trx: DbOrTrx, avatarId: string, known?: AvatarRow): Promise<void> {
    const avatar = known ?? await findAvatar(trx, avatarId)
    this.avatarRows.delete(avatarId)
    // Issued together: one round trip on PostgreSQL (pipelinedTransact).
    await Promise.all([
      deleteAvatar(trx, avatarId),
      avatar === undefined ? undefined : scheduleBlobGc(trx, avatar.sha256, avatar.ext, this.now() + this.options.blobGcGraceSeconds)
    ])
  }

  /**
   * Listed agents as JSON text, each as GET /agents/:id shows it. An agent's JSON is made of its row
   * as shown now and its avatar record (which never changes), so the JSON made for a row is reused
   * while that row reads the same, column by column. Every row is still read, so nothing listed is
   * older than the database. Making the JSON was a third of a list's CPU (BENCHMARKS.md).
   */
  private async listItems (rows: AgentRow[], query: Omit<ListQueryInput, 'limit' | 'cursor'>): Promise<string[]> {
    const now = this.now()
    const items: string[] = new Array<string>(rows.length)
    const made: number[] = []
    const asShown = rows.map((row, i) => {
      const current = effective(row, now)
      const known = this.shown.get(current.id)
      if (known !== undefined && sameRow(known.row, current)) items[i] = known.json
      else made.push(i)
      return current
    })
    if (made.length === 0) return items
    let dropped = false
    const avatars = await this.avatarsOf(made.map((i) => asShown[i] as AgentRow))
    for (const i of made) {
      let row = asShown[i] as AgentRow
      let avatar = row.avatar_id === null ? undefined : avatars.get(row.avatar_id)
      if (isStale(row, avatar)) {
        // Written after the list was read (isStale): this one agent is shown as it is now, or not
        // at all when it was deleted since or no longer meets the list's filters (as a list read
        // a moment later would have it).
        const fresh = await this.findById(row.widget_id, row.id)
        const current = fresh === undefined ? undefined : effective(fresh, this.now())
        if (current === undefined || !meetsFilters(current, query)) {
          dropped = true
          continue
        }
        row = current
        avatar = row.avatar_id === null ? undefined : await this.avatarRow(row.avatar_id)
      }
      const json = JSON.stringify(this.rawShape(row, avatar))
      items[i] = json
      // Its ETag is made once a GET needs it.
      this.rememberShown(row, avatar, json, undefined)
    }
    return dropped ? items.filter((item) => item !== undefined) : items
  }

  /** The avatar records these rows refer to, by id (a record deleted since the rows were read is missing). */
  private async avatarsOf (rows: AgentRow[]): Promise<Map<string, AvatarRow>> {
    // Held here for the caller: remembering the ones fetched may push others out of avatarRows.
    const avatars = new Map<string, AvatarRow>()
    const missing = new Set<string>()
    for (const { avatar_id: id } of rows) {
      if (id === null || avatars.has(id)) continue
      const known = this.avatarRows.get(id)
      if (known !== undefined) avatars.set(id, known)
      else missing.add(id)
    }
    for (const avatar of await findAvatarsByIds(this.db, [...missing])) {
      avatars.set(avatar.id, avatar)
      this.rememberAvatar(avatar)
    }
    return avatars
  }

  /**
   * An avatar record by id. Avatar records never change once written (a new picture is a new record),
   * so they are kept in memory once read, on every store and every instance: a record deleted elsewhere
   * is only asked for by a row that was read before the delete, which it then matches.
   */
  private async avatarRow (id: string): Promise<AvatarRow | undefined> {
    const known = this.avatarRows.get(id)
    if (known !== undefined) return known
    const row = await findAvatar(this.db, id)
    if (row !== undefined) this.rememberAvatar(row)
    return row
  }

  private rememberAvatar (row: AvatarRow): void {
    setBounded(this.avatarRows, row.id, row, this.options.avatarRowsKept ?? AVATAR_ROWS_KEPT)
  }

  /** The agent as the API shows it now (a lapsed heartbeat reads as offline). */
  private shape (stored: AgentRow, avatar: AvatarRow | undefined): Agent {
    return this.shapeAt(stored, avatar, this.now())
  }

  /** The agent as the API shows it at `now`: a write shows itself, and makes its events, as of its own `now`. */
  private shapeAt (stored: AgentRow, avatar: AvatarRow | undefined, now: number): Agent {
    return this.rawShape(effective(stored, now), avatar)
  }

  /** The agent exactly as the row says. */
  private rawShape (row: AgentRow, avatar: AvatarRow | undefined): Agent {
    return {
      id: row.id,
      serviceUserId: row.service_user_id,
      name: row.name,
      status: row.status,
      avatar: avatar === undefined ? null : this.avatars.toApi(avatar),
      active: row.active === 1,
      createdAt: row.created_at,
      updatedAt: row.updated_at
    }
  }
}

/** Until when (unix seconds) a cached agent reads as it was cached: an online heartbeat lapses. */
function cachedUntil (row: AgentRow): number {
  return row.status === 'online' && row.presence_expires_at !== null ? row.presence_expires_at : Infinity
}

/** Whether two rows of an agent hold the same values in every column (a listed row may carry its version tag besides: see listAgentsTagged). */
function sameRow (a: AgentRow, b: AgentRow): boolean {
  for (const column of AGENT_COLUMNS) {
    if (a[column] !== b[column]) return false
  }
  return true
}

/**
 * The `updatedAt` a change made at `now` stamps: never earlier than the one it replaces. An instance
 * whose clock is behind another's, or a write whose moment was taken just before another write to
 * the same agent committed, would otherwise move it backwards, and an `updatedSince` sync that
 * keeps the newest `updatedAt` it has seen would then never see that change.
 */
function laterOf (now: number, row: Pick<AgentRow, 'updated_at'>): number {
  return Math.max(now, row.updated_at)
}

/**
 * Whether a row refers to an avatar record that is gone. Records never change, but a write that
 * replaces or removes an agent's avatar (or deletes the agent) deletes the old one: a row read just
 * before such a write, whose record is looked up just after it, is out of date, and showing it with
 * no avatar would show a state that never was.
 */
function isStale (row: AgentRow, avatar: AvatarRow | undefined): boolean {
  return row.avatar_id !== null && avatar === undefined
}

/** The row as the API shows it at `now`: a lapsed heartbeat reads as offline since it lapsed. */
function effective (row: AgentRow, now: number): AgentRow {
  if (row.status === 'online' && row.presence_expires_at !== null && row.presence_expires_at <= now) {
    return { ...row, status: 'offline', updated_at: Math.max(row.updated_at, row.presence_expires_at), presence_expires_at: null }
  }
  return row
}

function avatarInput (avatar: string | null | undefined, upload: Buffer | undefined): AvatarInput {
  if (upload !== undefined) {
    if (avatar !== undefined && avatar !== null && avatar !== '') {
      throw errors.validation([{ field: 'avatar', message: 'give either an avatar URL or an avatar file, not both' }])
    }
    return { upload }
  }
  return avatar === undefined || avatar === null || avatar === '' ? null : { url: avatar }
}

function notFoundByServiceUserId (serviceUserId: string): AppError {
  return new AppError('not_found', `No agent with serviceUserId ${JSON.stringify(serviceUserId)} exists for this widget.`)
}

/** One image's content, as the file collector's schedule and claims name it. */
function contentKey (sha256: string, ext: string): string {
  return `${sha256}.${ext}`
}
