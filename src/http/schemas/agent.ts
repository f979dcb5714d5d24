import { Type, type Static } from 'typebox'

/** The seed's Agent resource: one schema validates requests, serializes responses, documents and types them. */

const Status = Type.Unsafe<'online' | 'offline'>({ type: 'string', enum: ['online', 'offline'], description: 'Status of the agent.' })
const UnixSeconds = Type.Integer({ minimum: 0, description: 'Unix time in seconds.' })

export const AvatarSchema = Type.Object({
  id: Type.String({ format: 'uuid' }),
  type: Type.Literal('image'),
  meta: Type.Object({
    width: Type.Integer({ description: 'Width of the stored original in pixels.' }),
    height: Type.Integer({ description: 'Height of the stored original in pixels.' })
  }),
  info: Type.Object({
    ext: Type.Unsafe<'jpeg' | 'png' | 'webp' | 'gif'>({ type: 'string', enum: ['jpeg', 'png', 'webp', 'gif'] }),
    name: Type.String({ pattern: '^[0-9a-f]{13}$', description: '8 hex digits of unix seconds and 5 of microseconds.' }),
    path: Type.String({ description: '/xx/yy/zz/<sha256 of the stored original>.<ext>' }),
    size: Type.Integer({ description: 'Bytes of the stored original.' }),
    mimeType: Type.String()
  }),
  url: Type.Object({
    '120x120': Type.String({ description: 'Exactly 120x120, cover crop.' }),
    '520x400': Type.String({ description: 'Fits inside 520x400, never enlarged.' }),
    default: Type.String({ description: 'The stored original.' })
  }),
  createdAt: UnixSeconds,
  updatedAt: UnixSeconds
}, { additionalProperties: false })
export type Avatar = Static<typeof AvatarSchema>

export const AgentSchema = Type.Object({
  id: Type.String({ format: 'uuid' }),
  serviceUserId: Type.String({ description: "The integrator's own id for this agent; unique within a widget." }),
  name: Type.String(),
  status: Status,
  avatar: Type.Union([AvatarSchema, Type.Null()]),
  active: Type.Boolean(),
  createdAt: UnixSeconds,
  updatedAt: UnixSeconds
}, { additionalProperties: false })
export type Agent = Static<typeof AgentSchema>

/**
 * Strings stored or looked up as they are: no NUL character (PostgreSQL's text cannot hold one, so
 * both stores refuse it alike); a name or id also has a character other than white space.
 */
export const NO_NUL_PATTERN = '^[^\\u0000]*$'
export const TEXT_PATTERN = '^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$'
const text = (description: string) => Type.String({ minLength: 1, maxLength: 255, pattern: TEXT_PATTERN, description })
const avatarUrl = Type.Unsafe<string | null>({
  type: ['string', 'null'],
  maxLength: 2048,
  description: 'http(s) URL of the agent\'s avatar image (JPEG, PNG, WebP or GIF); null or "" removes it.'
})

const fields = {
  active: Type.Boolean({ description: 'Is agent active or not. In form bodies: true, false, 1 or 0.' }),
  serviceUserId: text('Simple string that identifies the agent in your service.'),
  name: text("Agent's name."),
  avatar: avatarUrl,
  status: Status
}

export const CreateAgentBody = Type.Object({
  active: Type.Optional(fields.active),
  serviceUserId: fields.serviceUserId,
  name: fields.name,
  avatar: Type.Optional(fields.avatar),
  status: Type.Optional(fields.status)
}, { additionalProperties: false })
export type CreateAgentInput = Static<typeof CreateAgentBody>

export const UpdateAgentBody = Type.Object({
  active: Type.Optional(fields.active),
  serviceUserId: Type.Optional(fields.serviceUserId),
  name: Type.Optional(fields.name),
  avatar: Type.Optional(fields.avatar),
  status: Type.Optional(fields.status)
}, { additionalProperties: false })
export type UpdateAgentInput = Static<typeof UpdateAgentBody>

export const AgentParams = Type.Object({
  id: Type.String({ description: 'ID of the agent.' })
})

export const ServiceUserIdParams = Type.Object({
  serviceUserId: Type.String({ minLength: 1, maxLength: 255, pattern: NO_NUL_PATTERN, description: "The integrator's own id of the agent." })
})

export const UpsertAgentBody = Type.Object({
  active: Type.Optional(fields.active),
  serviceUserId: Type.Optional(text('If given, must equal the serviceUserId in the path.')),
  name: Type.Optional(text("Agent's name; required when the agent does not exist yet.")),
  avatar: Type.Optional(fields.avatar),
  status: Type.Optional(fields.status)
}, { additionalProperties: false })
export type UpsertAgentInput = Static<typeof UpsertAgentBody>

export const UpsertQuery = Type.Object({
  refreshAvatar: Type.Optional(Type.Boolean({ description: 'Download the avatar again even when its URL is unchanged.' }))
})

export const ListQuery = Type.Object({
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 200, description: 'Page size (default 50, at most 200). Giving limit or cursor turns pagination on; without either the whole list comes back, as in the seed.' })),
  cursor: Type.Optional(Type.String({ minLength: 1, maxLength: 200, description: 'meta.nextCursor of the previous page.' })),
  status: Type.Optional(Status),
  active: Type.Optional(Type.Boolean()),
  serviceUserId: Type.Optional(Type.String({ minLength: 1, maxLength: 255, pattern: NO_NUL_PATTERN })),
  q: Type.Optional(Type.String({ minLength: 1, maxLength: 255, pattern: NO_NUL_PATTERN, description: 'Name contains this, ignoring case (Unicode-aware).' })),
  updatedSince: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, description: 'Only agents whose updatedAt is at or after this unix time (incremental sync).' }))
}, { additionalProperties: false })
export type ListQueryInput = Static<typeof ListQuery>

export const ListMeta = Type.Object({
  nextCursor: Type.Union([Type.String(), Type.Null()], { description: 'Pass as cursor for the next page; null on the last page.' }),
  limit: Type.Integer()
})

export const Availability = Type.Object({
  online: Type.Integer({ description: 'Agents that are online and active right now.' }),
  available: Type.Boolean({ description: 'Whether anyone is (online > 0).' })
})
