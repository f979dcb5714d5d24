import type { DbOrTrx } from '../index.js'
import { compiledInsert } from '../compiled.js'
import type { AvatarRow, NewAvatarRow } from '../types.js'

export async function insertAvatar (db: DbOrTrx, row: NewAvatarRow): Promise<void> {
  // Compiled once per set of columns given (compiledOnce): every new avatar runs it.
  await db.executeQuery(compiledInsert(db, 'avatars', row, (values) => db.insertInto('avatars').values(values)))
}

export async function deleteAvatar (db: DbOrTrx, id: string): Promise<void> {
  await db.deleteFrom('avatars').where('id', '=', id).execute()
}

export async function findAvatarsByIds (db: DbOrTrx, ids: readonly string[]): Promise<AvatarRow[]> {
  const rows: AvatarRow[] = []
  // Chunked to stay well under SQLite's bound-parameter limit.
  for (let i = 0; i < ids.length; i += 500) {
    rows.push(...await db.selectFrom('avatars').selectAll().where('id', 'in', ids.slice(i, i + 500)).execute())
  }
  return rows
}

export async function findAvatar (db: DbOrTrx, id: string): Promise<AvatarRow | undefined> {
  return await db.selectFrom('avatars').selectAll().where('id', '=', id).executeTakeFirst()
}

/** Content avatars refer to: an image's hash and extension, how many avatars, and when the first was made. */
export interface AvatarContent {
  sha256: string
  ext: string
  avatars: number
  first_created_at: number
}

/**
 * A page of the content avatars refer to, each once, in hash order after `after` (keyset, like list
 * pages). Grouped by the hash alone, the order of its index, so that a page reads only its own
 * rows: an image's hash decides its extension (it is the hash of the stored bytes).
 */
export async function avatarContentPage (db: DbOrTrx, afterSha256: string | undefined, limit: number): Promise<AvatarContent[]> {
  let q = db.selectFrom('avatars')
    .select((eb) => ['sha256', eb.fn.min<string>('ext').as('ext'), eb.fn.countAll<number>().as('avatars'), eb.fn.min<number>('created_at').as('first_created_at')])
    .groupBy('sha256')
    .orderBy('sha256')
    .limit(limit)
  if (afterSha256 !== undefined) q = q.where('sha256', '>', afterSha256)
  const rows = await q.execute()
  return rows.map((r) => ({ ...r, avatars: Number(r.avatars), first_created_at: Number(r.first_created_at) }))
}

/** Of these hashes (500 at most: SQLite's parameter limit), those some avatar refers to. */
export async function referencedHashes (db: DbOrTrx, hashes: readonly string[]): Promise<Set<string>> {
  if (hashes.length === 0) return new Set()
  const rows = await db.selectFrom('avatars').select('sha256').distinct().where('sha256', 'in', hashes).execute()
  return new Set(rows.map((r) => r.sha256))
}
