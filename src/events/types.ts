import { Type, type Static } from 'typebox'
import { AgentSchema } from '../http/schemas/agent.js'

export const EVENT_TYPES = ['agent.created', 'agent.updated', 'agent.status_changed', 'agent.deleted'] as const
export type EventType = typeof EVENT_TYPES[number]

const Change = Type.Object({ from: Type.Unknown(), to: Type.Unknown() })

/** What subscribers receive, on the stream and in webhooks alike. */
export const AgentEventSchema = Type.Object({
  id: Type.String({ description: 'Orders events within a widget (a decimal number); use as Last-Event-ID.' }),
  type: Type.Unsafe<EventType>({ type: 'string', enum: [...EVENT_TYPES] }),
  createdAt: Type.Integer({ description: 'Unix seconds.' }),
  data: Type.Object({
    agent: AgentSchema,
    changes: Type.Record(Type.String(), Change, { description: 'Field -> {from, to}; empty for created and deleted.' })
  })
})
export type AgentEvent = Static<typeof AgentEventSchema>
export type Changes = AgentEvent['data']['changes']
