import type { DbOrTrx } from '../index.js'
import type { NewTokenRow, TokenRow } from '../types.js'

export interface TokenListing {
  id: string
  widgetName: string
  scope: TokenRow['scope']
  createdAt: number
  revokedAt: number | null
}

export async function insertToken (db: DbOrTrx, row: NewTokenRow): Promise<void> {
  await db.insertInto('tokens').values(row).execute()
}

export async function findActiveTokenByHash (db: DbOrTrx, tokenHash: string): Promise<Pick<TokenRow, 'widget_id' | 'token_hash' | 'scope'> | undefined> {
  return await db.selectFrom('tokens')
    .select(['widget_id', 'token_hash', 'scope'])
    .where('token_hash', '=', tokenHash)
    .where('revoked_at', 'is', null)
    .executeTakeFirst()
}

/** Any token with this hash, revoked or not. */
export async function findTokenByHash (db: DbOrTrx, tokenHash: string): Promise<TokenRow | undefined> {
  return await db.selectFrom('tokens').selectAll().where('token_hash', '=', tokenHash).executeTakeFirst()
}

export async function countTokens (db: DbOrTrx): Promise<number> {
  const row = await db.selectFrom('tokens').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow()
  return Number(row.n)
}

export async function listTokens (db: DbOrTrx): Promise<TokenListing[]> {
  const rows = await db.selectFrom('tokens')
    .innerJoin('widgets', 'widgets.id', 'tokens.widget_id')
    .select(['tokens.id', 'widgets.name', 'tokens.scope', 'tokens.created_at', 'tokens.revoked_at'])
    .orderBy('tokens.created_at', 'asc')
    .orderBy('tokens.id', 'asc')
    .execute()
  return rows.map((r) => ({ id: r.id, widgetName: r.name, scope: r.scope, createdAt: r.created_at, revokedAt: r.revoked_at }))
}

/** Revokes by token id or by token hash; returns how many tokens were revoked now. */
export async function revokeToken (db: DbOrTrx, idOrHash: { id: string, hash: string }, now: number): Promise<number> {
  const result = await db.updateTable('tokens')
    .set({ revoked_at: now })
    .where((eb) => eb.or([eb('id', '=', idOrHash.id), eb('token_hash', '=', idOrHash.hash)]))
    .where('revoked_at', 'is', null)
    .executeTakeFirst()
  return Number(result.numUpdatedRows)
}
