import { randomBytes, randomUUID, timingSafeEqual } from 'node:crypto'
import { isUniqueViolation, type Db } from '../db/index.js'
import { countTokens, findActiveTokenByHash, findTokenByHash, insertToken, listTokens, revokeToken, type TokenListing } from '../db/repositories/tokens.js'
import { ensureWidget } from '../db/repositories/widgets.js'
import type { TokenScope } from '../db/types.js'
import { setBounded } from '../util/bounded-map.js'
import { sha256 } from '../util/sha256.js'

export const DEFAULT_WIDGET = 'default'

/** sha256 of the token, hex: what is stored, and the key of per-token rate limits. On every request, so one-shot. */
export function hashToken (token: string): string {
  return sha256(token, 'hex')
}

/** Compares two secrets in constant time, whatever their lengths. */
export function secretsEqual (a: string, b: string): boolean {
  return timingSafeEqual(Buffer.from(hashToken(a), 'hex'), Buffer.from(hashToken(b), 'hex'))
}

/** 256 random bits, URL-safe, with a prefix that secret scanners can recognise. */
export function generateToken (): string {
  return `agt_${randomBytes(32).toString('base64url')}`
}

export interface CreatedToken {
  id: string
  token: string
  widgetName: string
  scope: TokenScope
}

export interface TokenIdentity {
  widgetId: string
  scope: TokenScope
  /** sha256 of the token: a stable key for per-token rate limits that is not the secret. */
  tokenHash: string
}

const nowSeconds = () => Math.floor(Date.now() / 1000)

/** Tokens remembered at most, of each kind: found valid, and found unknown or revoked. */
const TOKENS_KEPT = 10_000

/**
 * Widget tokens: stored only as sha256 hashes. Lookups are cached for at most cacheTtlMs, which bounds
 * how long a revoked token keeps working on a running instance.
 */
export class TokenService {
  /**
   * Tokens found valid and tokens found unknown (or revoked), apart: a flood of made-up tokens
   * pushes out only older made-up ones, never what this instance knows to be valid (wasValid).
   * Each is kept to TOKENS_KEPT, the one looked up longest ago going first.
   */
  private readonly valid = new Map<string, { identity: TokenIdentity, expires: number }>()
  private readonly unknown = new Map<string, number>()

  constructor (private readonly db: Db, private readonly cacheTtlMs = 1000, private readonly kept = TOKENS_KEPT) {}

  async create (widgetName: string, options: { token?: string, scope?: TokenScope } = {}): Promise<CreatedToken> {
    const token = options.token ?? generateToken()
    const scope = options.scope ?? 'write'
    const widget = await ensureWidget(this.db, widgetName, nowSeconds())
    const id = randomUUID()
    await insertToken(this.db, { id, widget_id: widget.id, token_hash: hashToken(token), scope, created_at: nowSeconds(), revoked_at: null })
    return { id, token, widgetName, scope }
  }

  async list (): Promise<TokenListing[]> {
    return await listTokens(this.db)
  }

  /** Revokes a token given its id or the token itself; returns how many were revoked. */
  async revoke (idOrToken: string): Promise<number> {
    const n = await revokeToken(this.db, { id: idOrToken, hash: hashToken(idOrToken) }, nowSeconds())
    this.valid.clear()
    return n
  }

  /** What authenticateHash would answer from its cache alone: null for a known-bad token, undefined when not cached. */
  cachedIdentity (hash: string): TokenIdentity | null | undefined {
    const now = Date.now()
    const valid = this.valid.get(hash)
    if (valid !== undefined) return valid.expires > now ? valid.identity : undefined
    const unknownUntil = this.unknown.get(hash)
    return unknownUntil !== undefined && unknownUntil > now ? null : undefined
  }

  /**
   * Whether the token with this sha256 was valid when this instance last looked it up (however
   * long ago); undefined if it has not looked it up, or has forgotten it (TOKENS_KEPT).
   */
  wasValid (hash: string): boolean | undefined {
    if (this.valid.has(hash)) return true
    return this.unknown.has(hash) ? false : undefined
  }

  /** The widget and scope of a token given its sha256 (hashToken), or undefined for an unknown or revoked token. */
  async authenticateHash (hash: string): Promise<TokenIdentity | undefined> {
    const cached = this.cachedIdentity(hash)
    if (cached !== undefined) return cached ?? undefined
    const now = Date.now()
    const row = await findActiveTokenByHash(this.db, hash)
    // The hash was found by an index lookup; the final comparison is constant-time all the same.
    const identity = row !== undefined && timingSafeEqual(Buffer.from(row.token_hash, 'hex'), Buffer.from(hash, 'hex'))
      ? { widgetId: row.widget_id, scope: row.scope, tokenHash: hash }
      : null
    if (identity === null) {
      this.valid.delete(hash)
      setBounded(this.unknown, hash, now + this.cacheTtlMs, this.kept)
      return undefined
    }
    this.unknown.delete(hash)
    setBounded(this.valid, hash, { identity, expires: now + this.cacheTtlMs }, this.kept)
    return identity
  }

  /**
   * Makes sure the service can be called: BOOTSTRAP_TOKEN is ensured for the default widget, and with
   * no token at all a new one is created. Returns the token only when it was generated here.
   * A bootstrap token that was revoked stays revoked: revocation is the operator's later word.
   */
  async bootstrap (bootstrapToken: string | undefined): Promise<CreatedToken | undefined> {
    if (bootstrapToken !== undefined) {
      if (await findTokenByHash(this.db, hashToken(bootstrapToken)) !== undefined) return undefined
      try {
        await this.create(DEFAULT_WIDGET, { token: bootstrapToken })
      } catch (err) {
        // Another instance starting at the same moment inserted it first.
        if (!isUniqueViolation(err)) throw err
      }
      return undefined
    }
    if (await countTokens(this.db) > 0) return undefined
    return await this.create(DEFAULT_WIDGET)
  }
}
