import { randomUUID } from 'node:crypto'
import type { AvatarService, StoredImage } from '../avatars/service.js'
import { timeOrderedName } from '../avatars/names.js'
import { isUniqueViolation, type Db, type DbOrTrx } from '../db/index.js'
import { findAgent, findAgentByServiceUserId, insertAgent, listAgents, updateAgent } from '../db/repositories/agents.js'
import { deleteAvatar, findAvatarsByIds, insertAvatar } from '../db/repositories/avatars.js'
import type { AgentRow, AgentRowUpdate, AvatarRow } from '../db/types.js'
import { errors } from '../errors/index.js'
import type { Agent, CreateAgentInput, UpdateAgentInput } from '../http/schemas/agent.js'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

export type Clock = () => number
const unixSeconds: Clock = () => Math.floor(Date.now() / 1000)

/** The agent domain: the seed's four operations, scoped to one widget, rows mapped to API shapes. */
export class AgentService {
  constructor (
    private readonly db: Db,
    private readonly avatars: AvatarService,
    private readonly now: Clock = unixSeconds
  ) {}

  async list (widgetId: string): Promise<Agent[]> {
    const rows = await listAgents(this.db, widgetId)
    return await this.toApi(this.db, rows)
  }

  async get (widgetId: string, id: string): Promise<Agent> {
    const row = await this.mustFind(this.db, widgetId, id)
    return (await this.toApi(this.db, [row]))[0] as Agent
  }

  async create (widgetId: string, input: CreateAgentInput): Promise<Agent> {
    // Checked before the avatar download so a duplicate costs nothing; the unique index decides races.
    await this.mustBeFreeServiceUserId(widgetId, input.serviceUserId)
    const image = isAvatarRemoval(input.avatar) ? undefined : await this.avatars.ingestUrl(input.avatar)
    const now = this.now()
    try {
      return await this.db.transaction().execute(async (trx) => {
        const avatar = image === undefined ? undefined : await this.insertAvatarRow(trx, widgetId, image, now)
        const row = await insertAgent(trx, {
          id: randomUUID(),
          widget_id: widgetId,
          service_user_id: input.serviceUserId,
          name: input.name,
          status: input.status ?? 'offline',
          active: (input.active ?? true) ? 1 : 0,
          avatar_id: avatar?.id ?? null,
          created_at: now,
          updated_at: now
        })
        return this.shape(row, avatar)
      })
    } catch (err) {
      if (isUniqueViolation(err)) throw errors.serviceUserIdTaken(input.serviceUserId)
      throw err
    }
  }

  /** Changes only the fields given; a request that changes nothing leaves updatedAt as it was. */
  async update (widgetId: string, id: string, input: UpdateAgentInput): Promise<Agent> {
    const current = await this.mustFind(this.db, widgetId, id)
    const [currentAvatar] = current.avatar_id === null ? [] : await findAvatarsByIds(this.db, [current.avatar_id])
    const changes: AgentRowUpdate = {}
    if (input.serviceUserId !== undefined && input.serviceUserId !== current.service_user_id) {
      await this.mustBeFreeServiceUserId(widgetId, input.serviceUserId)
      changes.service_user_id = input.serviceUserId
    }
    if (input.name !== undefined && input.name !== current.name) changes.name = input.name
    if (input.status !== undefined && input.status !== current.status) changes.status = input.status
    if (input.active !== undefined && (input.active ? 1 : 0) !== current.active) changes.active = input.active ? 1 : 0

    let image: StoredImage | undefined
    let removeAvatar = false
    if (input.avatar !== undefined) {
      if (isAvatarRemoval(input.avatar)) {
        removeAvatar = currentAvatar !== undefined
      } else {
        image = await this.avatars.ingestUrl(input.avatar)
        // The same picture again (same bytes after processing) is no change.
        if (currentAvatar !== undefined && currentAvatar.sha256 === image.sha256) image = undefined
      }
    }
    if (Object.keys(changes).length === 0 && image === undefined && !removeAvatar) {
      return this.shape(current, currentAvatar)
    }

    const now = this.now()
    try {
      return await this.db.transaction().execute(async (trx) => {
        let avatar = currentAvatar
        if (image !== undefined) {
          avatar = await this.insertAvatarRow(trx, widgetId, image, now)
          changes.avatar_id = avatar.id
        } else if (removeAvatar) {
          avatar = undefined
          changes.avatar_id = null
        }
        changes.updated_at = now
        const row = await updateAgent(trx, widgetId, id, changes)
        if (row === undefined) throw errors.agentNotFound(id)
        if (currentAvatar !== undefined && changes.avatar_id !== undefined) await deleteAvatar(trx, currentAvatar.id)
        return this.shape(row, avatar)
      })
    } catch (err) {
      if (isUniqueViolation(err) && changes.service_user_id !== undefined) throw errors.serviceUserIdTaken(changes.service_user_id)
      throw err
    }
  }

  private async mustFind (db: DbOrTrx, widgetId: string, id: string): Promise<AgentRow> {
    const row = UUID.test(id) ? await findAgent(db, widgetId, id.toLowerCase()) : undefined
    if (row === undefined) throw errors.agentNotFound(id)
    return row
  }

  private async mustBeFreeServiceUserId (widgetId: string, serviceUserId: string): Promise<void> {
    if (await findAgentByServiceUserId(this.db, widgetId, serviceUserId) !== undefined) {
      throw errors.serviceUserIdTaken(serviceUserId)
    }
  }

  private async insertAvatarRow (trx: DbOrTrx, widgetId: string, image: StoredImage, now: number): Promise<AvatarRow> {
    const row: AvatarRow = {
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
    await insertAvatar(trx, row)
    return row
  }

  private async toApi (db: DbOrTrx, rows: AgentRow[]): Promise<Agent[]> {
    const avatarIds = rows.flatMap((r) => r.avatar_id === null ? [] : [r.avatar_id])
    const avatars = new Map((await findAvatarsByIds(db, avatarIds)).map((a) => [a.id, a]))
    return rows.map((r) => this.shape(r, r.avatar_id === null ? undefined : avatars.get(r.avatar_id)))
  }

  private shape (row: AgentRow, avatar: AvatarRow | undefined): Agent {
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

function isAvatarRemoval (avatar: string | null | undefined): avatar is null | undefined | '' {
  return avatar === undefined || avatar === null || avatar === ''
}
