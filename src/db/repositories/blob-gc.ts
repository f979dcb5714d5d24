import { sql } from 'kysely'
import type { DbOrTrx, DialectName } from '../index.js'
import { compiledOnce } from '../compiled.js'
import { databaseSeconds } from '../database-clock.js'
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

/** Takes content off the schedule; with dueBy, only if it was due by then. */
export async function clearBlobGc (db: DbOrTrx, sha256: string, ext: string, dueBy?: number): Promise<void> {
  // Compiled once (compiledOnce): every new avatar runs the first form.
  const query = dueBy === undefined
    ? compiledOnce(db, 'clearBlobGc', [sha256, ext], (v) => db.deleteFrom('blob_gc').where('sha256', '=', v(0)).where('ext', '=', v(1)))
    : compiledOnce(db, 'clearBlobGc:dueBy', [sha256, ext, dueBy], (v) => db.deleteFrom('blob_gc').where('sha256', '=', v(0)).where('ext', '=', v(1)).where('eligible_at', '<=', v(2)))
  await db.executeQuery(query)
}

/**
 * Takes due content off the schedule if no avatar refers to it, and records the claim, with until
 * when its files may be being deleted (deadlineSeconds from now, by the database's clock); true
 * when it did. The caller commits this, then deletes the
 * files, then ends the claim (endBlobClaim). On PostgreSQL the deleted schedule row stays locked
 * until the claim commits, so a write that unschedules the same content at that moment
 * (unscheduleBlobGc) waits for the claim and then finds it.
 */
export async function claimBlobGc (trx: DbOrTrx, dialect: DialectName, sha256: string, ext: string, now: number, deadlineSeconds: number): Promise<boolean> {
  const { numDeletedRows } = await trx.deleteFrom('blob_gc')
    .where('sha256', '=', sha256).where('ext', '=', ext).where('eligible_at', '<=', now)
    .where((eb) => eb.not(eb.exists(eb.selectFrom('avatars').select('id').where('sha256', '=', sha256))))
    .executeTakeFirst()
  if (Number(numDeletedRows) === 0) return false
  const deletingUntil = sql<number>`${databaseSeconds(dialect)} + ${deadlineSeconds}`
  await trx.insertInto('blob_claims').values({ sha256, ext, claimed_at: now, deleting_until: deletingUntil })
    .onConflict((oc) => oc.columns(['sha256', 'ext']).doUpdateSet({ claimed_at: now, deleting_until: deletingUntil }))
    .execute()
  return true
}

/** The collector is done with this claim: its files are deleted (or it gave up and rescheduled them). */
export async function endBlobClaim (db: DbOrTrx, sha256: string, ext: string): Promise<void> {
  await db.updateTable('blob_claims').set({ deleting_until: 0 }).where('sha256', '=', sha256).where('ext', '=', ext).execute()
}

/** Whether a collector may still be deleting this content's files: claimed, not ended, its deadline not passed. */
export async function blobClaimPending (db: DbOrTrx, dialect: DialectName, sha256: string, ext: string): Promise<boolean> {
  const row = await db.selectFrom('blob_claims').select('sha256')
    .where('sha256', '=', sha256).where('ext', '=', ext).where('deleting_until', '>', databaseSeconds(dialect))
    .executeTakeFirst()
  return row !== undefined
}

/** Until when this content's files may still be being deleted; 0 (or undefined: no claim) when not. */
export async function blobClaimDeletingUntil (db: DbOrTrx, sha256: string, ext: string): Promise<number | undefined> {
  const query = compiledOnce(db, 'blobClaimDeletingUntil', [sha256, ext], (v) =>
    db.selectFrom('blob_claims').select('deleting_until').where('sha256', '=', v(0)).where('ext', '=', v(1)))
  return (await db.executeQuery(query)).rows[0]?.deleting_until
}

/** Claims whose collector never ended them (it stopped on the way) and whose time is up, by the database's clock. */
export async function abandonedBlobClaims (db: DbOrTrx, dialect: DialectName, limit: number): Promise<Array<{ sha256: string, ext: string }>> {
  return await db.selectFrom('blob_claims').select(['sha256', 'ext'])
    .where('deleting_until', '>', 0).where('deleting_until', '<=', databaseSeconds(dialect)).limit(limit).execute()
}

/**
 * Called in the transaction that makes an avatar refer to this content: takes it off the
 * collector's schedule (waiting, on PostgreSQL, for a collector claiming it), then tells whether the
 * collector has ever claimed it, in which case its files may be gone and must be put back once it
 * is done deleting them (deletingUntil: see claimBlobGc).
 */
export async function unscheduleBlobGc (trx: DbOrTrx, sha256: string, ext: string): Promise<{ claimed: false } | { claimed: true, deletingUntil: number }> {
  // Two statements, in this order: the claim is read only once the delete has waited for the
  // collector. Issued together, they leave in one round trip on PostgreSQL (pipelinedTransact),
  // which runs them in the order issued.
  const [, deletingUntil] = await Promise.all([clearBlobGc(trx, sha256, ext), blobClaimDeletingUntil(trx, sha256, ext)])
  return deletingUntil === undefined ? { claimed: false } : { claimed: true, deletingUntil }
}

/** Forgets ended claims older than olderThan: every write that could have raced them is long over. */
export async function purgeBlobClaims (db: DbOrTrx, olderThan: number): Promise<void> {
  await db.deleteFrom('blob_claims').where('claimed_at', '<', olderThan).where('deleting_until', '=', 0).execute()
}

/**
 * Of these hashes (500 at most), those the collector knows: on its schedule, or claimed with their
 * files perhaps being deleted now.
 */
export async function knownToCollector (db: DbOrTrx, hashes: readonly string[]): Promise<Set<string>> {
  if (hashes.length === 0) return new Set()
  const [scheduled, claimed] = await Promise.all([
    db.selectFrom('blob_gc').select('sha256').where('sha256', 'in', hashes).execute(),
    db.selectFrom('blob_claims').select('sha256').where('sha256', 'in', hashes).where('deleting_until', '>', 0).execute()
  ])
  return new Set([...scheduled, ...claimed].map((r) => r.sha256))
}

/** Puts content on the collector's schedule unless it is there already (then its time is left as it is). */
export async function scheduleBlobGcIfAbsent (db: DbOrTrx, items: ReadonlyArray<{ sha256: string, ext: string }>, eligibleAt: number): Promise<void> {
  if (items.length === 0) return
  await db.insertInto('blob_gc').values(items.map(({ sha256, ext }) => ({ sha256, ext, eligible_at: eligibleAt })))
    .onConflict((oc) => oc.columns(['sha256', 'ext']).doNothing())
    .execute()
}
