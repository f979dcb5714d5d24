import { Type, type TSchema } from 'typebox'

/** `{"status": 200, "data": ...}`: every success, create included (the seed shows 200). */
export function Ok<T extends TSchema> (data: T) {
  return Type.Object({ status: Type.Literal(200), data })
}

export const ErrorEnvelope = Type.Object({
  status: Type.Integer({ description: 'The HTTP status code, repeated.' }),
  error: Type.Object({
    code: Type.String({ description: 'Stable snake_case code, e.g. validation_failed, avatar_not_an_image.' }),
    message: Type.String({ description: 'A sentence a person can act on.' }),
    details: Type.Optional(Type.Array(Type.Object({
      field: Type.Optional(Type.String({ description: 'The request field concerned, e.g. status.' })),
      message: Type.String()
    })))
  })
}, { $id: 'Error' })

export const errorResponses = (...codes: number[]) =>
  Object.fromEntries(codes.map((c) => [c, Type.Ref('Error')]))

/**
 * 304: no body at all, so no Content-Type and no Content-Length either (RFC 9110 forbids a
 * Content-Length other than the 200's). Answer it with `reply.code(304).send(undefined)`.
 */
export const NotModified = Type.Unknown({ description: 'Not modified: no body.' })
