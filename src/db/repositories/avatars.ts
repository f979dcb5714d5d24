import type { DbOrTrx } from '../index.js'
import type { AvatarRow, NewAvatarRow } from '../types.js'

export async function insertAvatar (db: DbOrTrx, row: NewAvatarRow): Promise<void> {
  await db.insertInto('avatars').values(row).execute()
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
