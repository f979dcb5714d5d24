import type { DbOrTrx } from '../index.js'
import type { BlobGcTable } from '../types.js'

/** Marks content as possibly unreferenced; collectable once eligibleAt has passed. */
export async function scheduleBlobGc (db: DbOrTrx, sha256: string, ext: string, eligibleAt: number): Promise<void> {
  await db.insertInto('blob_gc').values({ sha256, ext, eligible_at: eligibleAt })
    .onConflict((oc) => oc.columns(['sha256', 'ext']).doUpdateSet({ eligible_at: eligibleAt }))
    .execute()
}

export async function dueBlobGc (db: DbOrTrx, now: number, limit: number): Promise<BlobGcTable[]> {
  return await db.selectFrom('blob_gc').selectAll().where('eligible_at', '<=', now).orderBy('eligible_at').limit(limit).execute()
}

export async function clearBlobGc (db: DbOrTrx, sha256: string, ext: string): Promise<void> {
  await db.deleteFrom('blob_gc').where('sha256', '=', sha256).where('ext', '=', ext).execute()
}
