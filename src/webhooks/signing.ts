import { createHmac, randomBytes } from 'node:crypto'

/**
 * Signatures in the shape of the Standard Webhooks specification: headers webhook-id,
 * webhook-timestamp (unix seconds) and webhook-signature = "v1,<base64 HMAC-SHA256>", signed over
 * "<id>.<timestamp>.<body>" with the key encoded in the endpoint secret "whsec_<base64>".
 */
export function generateSecret (): string {
  return `whsec_${randomBytes(24).toString('base64')}`
}

function keyOf (secret: string): Buffer {
  return Buffer.from(secret.startsWith('whsec_') ? secret.slice('whsec_'.length) : secret, 'base64')
}

export function sign (secret: string, id: string, timestamp: number, body: string): string {
  return `v1,${createHmac('sha256', keyOf(secret)).update(`${id}.${timestamp}.${body}`).digest('base64')}`
}
