import type { Kysely } from 'kysely'

/**
 * The file collector commits its claim before it deletes the files, so no transaction stays open
 * while the store (a bucket) answers. deleting_until is until when a write that finds the claim
 * must assume the files may still be being deleted (unix seconds; 0 once the collector is done).
 * Claims made before this column are 0: their files were deleted before they were committed.
 * See AgentService.maintain.
 */
export function blobClaimsDeleting () {
  return {
    async up (db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('blob_claims').addColumn('deleting_until', 'bigint', (c) => c.notNull().defaultTo(0)).execute()
    },
    async down (db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('blob_claims').dropColumn('deleting_until').execute()
    }
  }
}
