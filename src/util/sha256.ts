import * as crypto from 'node:crypto'

type Encoding = 'hex' | 'base64url'

/** sha256 through a Hash object: what every Node 20 has. */
export function sha256Streamed (data: string, encoding: Encoding): string {
  return crypto.createHash('sha256').update(data).digest(encoding)
}

// crypto.hash (one call, no Hash object: faster on the per-request paths) came with Node 20.12;
// `engines` admits Node 20.10 and later, so 20.10-20.11 take the Hash object.
const oneShot = (crypto as { hash?: (algorithm: string, data: string, encoding: Encoding) => string }).hash

/** sha256 of a string, in the given encoding. */
export const sha256: (data: string, encoding: Encoding) => string = oneShot === undefined
  ? sha256Streamed
  : (data, encoding) => oneShot('sha256', data, encoding)
