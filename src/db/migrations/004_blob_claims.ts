import type { Kysely } from 'kysely'

/**
 * Content the file collector has claimed and deleted, kept for a while so that a write referring
 * to the same content at that moment knows to put the files back (see AgentService.maintain).
 */
export function blobClaims () {
  return {
    async up (db: Kysely<unknown>): Promise<void> {
      await db.schema.createTable('blob_claims')
        .addColumn('sha256', 'text', (c) => c.notNull())
        .addColumn('ext', 'text', (c) => c.notNull())
        .addColumn('claimed_at', 'bigint', (c) => c.notNull())
        .addPrimaryKeyConstraint('blob_claims_pkey', ['sha256', 'ext'])
        .execute()
      await db.schema.createIndex('blob_claims_claimed_idx').on('blob_claims').column('claimed_at').execute()
    },
    async down (db: Kysely<unknown>): Promise<void> {
      await db.schema.dropTable('blob_claims').execute()
    }
  }
}
