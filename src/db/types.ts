import type { Generated, Insertable, Selectable, Updateable } from 'kysely'

/** Row types per table. Times are integer unix seconds; booleans are 0/1 so both dialects store them alike. */
export interface WidgetTable {
  id: string
  name: string
  created_at: number
}

export interface TokenTable {
  id: string
  widget_id: string
  /** sha256 hex of the token; the token itself is never stored. */
  token_hash: string
  created_at: number
  revoked_at: number | null
}

export interface AgentTable {
  /** Internal insertion order: breaks ties between agents created in the same second. */
  seq: Generated<number>
  id: string
  widget_id: string
  service_user_id: string
  name: string
  status: 'online' | 'offline'
  active: number
  avatar_id: string | null
  created_at: number
  updated_at: number
}

export interface AvatarTable {
  id: string
  widget_id: string
  sha256: string
  ext: string
  mime_type: string
  size: number
  width: number
  height: number
  name: string
  source_url: string | null
  created_at: number
  updated_at: number
}

export interface Database {
  widgets: WidgetTable
  tokens: TokenTable
  agents: AgentTable
  avatars: AvatarTable
}

export type WidgetRow = Selectable<WidgetTable>
export type TokenRow = Selectable<TokenTable>
export type AgentRow = Selectable<AgentTable>
export type NewAgentRow = Insertable<AgentTable>
export type AgentRowUpdate = Updateable<AgentTable>
export type AvatarRow = Selectable<AvatarTable>
export type NewAvatarRow = Insertable<AvatarTable>
