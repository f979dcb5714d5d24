import { Type } from 'typebox'
import { EVENT_TYPES } from '../../../events/types.js'

const EventTypeName = Type.Unsafe<string>({ type: 'string', enum: ['*', ...EVENT_TYPES] })

export const EndpointSchema = Type.Object({
  id: Type.String(),
  url: Type.String(),
  eventTypes: Type.Array(Type.String()),
  createdAt: Type.Integer()
})

export const CreatedEndpointSchema = Type.Object({
  id: Type.String(),
  url: Type.String(),
  eventTypes: Type.Array(Type.String()),
  createdAt: Type.Integer(),
  secret: Type.String({ description: 'whsec_…: the signing secret, shown only now.' })
})

export const CreateWebhookBody = Type.Object({
  url: Type.String({ minLength: 1, maxLength: 2048, description: 'http(s) URL that receives POSTs; private and loopback addresses are refused.' }),
  eventTypes: Type.Optional(Type.Array(EventTypeName, { maxItems: 10, description: 'Event types to receive; omitted or ["*"] for all.' }))
}, { additionalProperties: false })

export const WebhookParams = Type.Object({ id: Type.String() })
export const DeliveryParams = Type.Object({ id: Type.String(), deliveryId: Type.String() })

export const DeliverySchema = Type.Object({
  id: Type.String({ description: 'The webhook-id header of every attempt of this delivery.' }),
  eventId: Type.String(),
  eventType: Type.String(),
  status: Type.Unsafe<'pending' | 'succeeded' | 'failed'>({ type: 'string', enum: ['pending', 'succeeded', 'failed'] }),
  attempts: Type.Array(Type.Object({
    attempt: Type.Integer(),
    at: Type.Integer({ description: 'Unix milliseconds.' }),
    statusCode: Type.Union([Type.Integer(), Type.Null()]),
    error: Type.Union([Type.String(), Type.Null()]),
    durationMs: Type.Integer(),
    responseBody: Type.Union([Type.String(), Type.Null()], { description: 'The first KiB of the response.' })
  })),
  nextAttemptAt: Type.Union([Type.Integer(), Type.Null()], { description: 'Unix milliseconds; null unless pending.' }),
  createdAt: Type.Integer({ description: 'Unix milliseconds.' })
})
