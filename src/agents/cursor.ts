import { errors } from '../errors/index.js'

export interface ListPosition {
  createdAt: number
  seq: number
}

/** An opaque, URL-safe cursor for the position after which the next page starts. */
export function encodeCursor (position: ListPosition): string {
  return Buffer.from(`v1:${position.createdAt}:${position.seq}`, 'utf8').toString('base64url')
}

export function decodeCursor (cursor: string): ListPosition {
  const match = /^v1:(\d{1,15}):(\d{1,15})$/.exec(Buffer.from(cursor, 'base64url').toString('utf8'))
  if (match === null) throw errors.validation([{ field: 'cursor', message: 'is not a cursor this API gave out; use meta.nextCursor of the previous page' }])
  return { createdAt: Number(match[1]), seq: Number(match[2]) }
}
