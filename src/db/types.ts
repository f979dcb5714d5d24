import type { ColumnType, Generated, Insertable, Selectable, Updateable } from 'kysely'

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
  scope: Generated<TokenScope>
  created_at: number
  revoked_at: number | null
}

/** `read` tokens may only GET; `write` tokens may do everything. */
export type TokenScope = 'read' | 'write'

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
  /** searchableName(name): what `q` matches. */
  name_search: string
  /** While status is online because of heartbeats: when it lapses to offline (unix seconds). */
  presence_expires_at: number | null
  /** Bumped by every write; writes are conditional on it (optimistic concurrency). */
  version: Generated<number>
  created_at: number
  updated_at: number
}

export interface IdempotencyKeyTable {
  widget_id: string
  key: string
  /** sha256 of the request body: a retry must send the same. */
  request_hash: string
  /** null while the first request is still being answered. */
  status_code: number | null
  response: string | null
  created_at: number
  /** The request holding the claim while it is unanswered (see migration 008). */
  claim_owner: ColumnType<string | null, string | null | undefined, string | null>
}

export interface BlobGcTable {
  sha256: string
  ext: string
  eligible_at: number
}

export interface BlobClaimTable {
  sha256: string
  ext: string
  claimed_at: number
  /** Until when the collector may still be deleting the files (unix seconds); 0 once it is done. */
  deleting_until: ColumnType<number, number | undefined, number>
}

/** PostgreSQL only: a token's requests in its rate-limit window, counted by all instances. */
export interface RateLimitWindowTable {
  /** The token's sha256 (hashToken). */
  key: string
  /** When the window ends (Date.now() milliseconds). */
  ends_at: number
  count: number
}

export interface EventTable {
  /** Orders events; per widget it is the event id clients see (SSE id, Last-Event-ID). */
  seq: Generated<number>
  widget_id: string
  type: string
  agent_id: string
  /** JSON: { agent, changes }. */
  payload: string
  created_at: number
}

export interface WebhookEndpointTable {
  id: string
  widget_id: string
  url: string
  /** `whsec_<base64>`, as in the Standard Webhooks specification. */
  secret: string
  /** JSON array of event types, or ["*"]. */
  event_types: string
  created_at: number
}

export interface WebhookDeliveryTable {
  id: string
  endpoint_id: string
  event_seq: number
  status: 'pending' | 'succeeded' | 'failed'
  attempts: Generated<number>
  /** Unix milliseconds. */
  next_attempt_at: number
  /** Unix milliseconds by the database's clock; an instance sending this delivery holds it until then. */
  locked_until: Generated<number>
  /** The attempt holding the claim (see claimDelivery); null when none does. */
  claim_owner: Generated<string | null>
  created_at: number
  updated_at: number
}

export interface WebhookAttemptTable {
  delivery_id: string
  attempt: number
  /** Unix milliseconds. */
  at: number
  status_code: number | null
  error: string | null
  duration_ms: number
  response_body: string | null
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
  idempotency_keys: IdempotencyKeyTable
  blob_gc: BlobGcTable
  blob_claims: BlobClaimTable
  events: EventTable
  webhook_endpoints: WebhookEndpointTable
  webhook_deliveries: WebhookDeliveryTable
  webhook_attempts: WebhookAttemptTable
  rate_limit_windows: RateLimitWindowTable
}

export type WidgetRow = Selectable<WidgetTable>
export type TokenRow = Selectable<TokenTable>
export type NewTokenRow = Insertable<TokenTable>
export type IdempotencyKeyRow = Selectable<IdempotencyKeyTable>
export type AgentRow = Selectable<AgentTable>
export type NewAgentRow = Insertable<AgentTable>
export type AgentRowUpdate = Updateable<AgentTable>
export type AvatarRow = Selectable<AvatarTable>
export type NewAvatarRow = Insertable<AvatarTable>
export type EventRow = Selectable<EventTable>
export type WebhookEndpointRow = Selectable<WebhookEndpointTable>
export type WebhookDeliveryRow = Selectable<WebhookDeliveryTable>
export type WebhookAttemptRow = Selectable<WebhookAttemptTable>
