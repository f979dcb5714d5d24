import { Migrator, sql, type Migration, type MigrationProvider, type MigrationResultSet } from 'kysely'
import type { Db, DialectName } from './index.js'
import { initial } from './migrations/001_initial.js'
import { syncPresenceScopes } from './migrations/002_sync_presence_scopes.js'
import { eventsWebhooks } from './migrations/003_events_webhooks.js'
import { blobClaims } from './migrations/004_blob_claims.js'
import { blobClaimsDeleting } from './migrations/005_blob_claims_deleting.js'
import { rateLimitWindows } from './migrations/006_rate_limit_windows.js'
import { webhookDeliveryLog } from './migrations/007_webhook_delivery_log.js'
import { idempotencyClaimOwner } from './migrations/008_idempotency_claim_owner.js'
import { webhookClaimOwner } from './migrations/009_webhook_claim_owner.js'

/** Migrations in order; names are stable keys in the migration table, never rename one. */
export function migrations (dialect: DialectName): Record<string, Migration> {
  return {
    '001_initial': initial(dialect),
    '002_sync_presence_scopes': syncPresenceScopes(),
    '003_events_webhooks': eventsWebhooks(dialect),
    '004_blob_claims': blobClaims(),
    '005_blob_claims_deleting': blobClaimsDeleting(),
    '006_rate_limit_windows': rateLimitWindows(dialect),
    '007_webhook_delivery_log': webhookDeliveryLog(),
    '008_idempotency_claim_owner': idempotencyClaimOwner(),
    '009_webhook_claim_owner': webhookClaimOwner()
  }
}

class StaticProvider implements MigrationProvider {
  constructor (private readonly dialect: DialectName) {}
  getMigrations (): Promise<Record<string, Migration>> {
    return Promise.resolve(migrations(this.dialect))
  }
}

export class MigrationError extends Error {
  override name = 'MigrationError'
}

function mustSucceed ({ error, results }: MigrationResultSet): NonNullable<MigrationResultSet['results']> {
  if (error !== undefined) {
    const failed = results?.find((r) => r.status === 'Error')
    const reason = error instanceof Error ? error.message : JSON.stringify(error)
    throw new MigrationError(failed === undefined
      ? `Could not read or lock the database schema (is the database reachable, and DATABASE_URL right?): ${reason}`
      : `Migration ${failed.migrationName} failed: ${reason}`, { cause: error })
  }
  return results ?? []
}

/**
 * Brings the schema up to date, safely when several processes start at once. On PostgreSQL,
 * Kysely's migrator holds an advisory lock. On SQLite its lock is a no-op, but the whole run is one
 * transaction that begins IMMEDIATE (see AgentrySqliteDialect): a second process waits for the
 * first one's run (up to 5 s, see LockWaitingConnection), then finds nothing left to do. Should the
 * wait run out, the attempt has changed nothing and is tried again.
 */
export async function migrateToLatest (db: Db, dialect: DialectName): Promise<string[]> {
  const migrator = new Migrator({ db, provider: new StaticProvider(dialect) })
  // A newer version migrated this database (a rolling upgrade under way, or a roll back of the code):
  // the migrator would refuse it all ("corrupted migrations"), and every older instance would fail to
  // start. Its schema has everything this version needs when every migration known here has run.
  const newer = await runButUnknown(db, dialect)
  if (newer.length > 0) {
    const missing = (await migrator.getMigrations()).filter((m) => m.executedAt === undefined).map((m) => m.name)
    if (missing.length > 0) {
      throw new MigrationError(`The database was migrated by a newer version of Agentry (${newer.join(', ')}) but lacks ${missing.join(', ')}, which this version needs; run the newer version.`)
    }
    process.emitWarning(`The database's schema is newer than this version of Agentry: it has ${newer.join(', ')}, which this version does not know. Starting without migrating. Finish the upgrade, or undo those migrations with the newer version's \`agentry migrate --down\` before going back to this one for good.`)
    return []
  }
  for (let attempt = 1; ; attempt++) {
    try {
      return mustSucceed(await migrator.migrateToLatest()).map((r) => r.migrationName)
    } catch (err) {
      if (dialect !== 'sqlite' || attempt >= 5) throw err
      await new Promise((resolve) => setTimeout(resolve, 50 + Math.random() * 200))
    }
  }
}

/** Migrations the database has run that this version does not know (none when it has no migration table yet). */
async function runButUnknown (db: Db, dialect: DialectName): Promise<string[]> {
  const known = migrations(dialect)
  let names: string[]
  try {
    names = (await sql<{ name: string }>`select name from kysely_migration`.execute(db)).rows.map((r) => r.name)
  } catch {
    // A new database (or one the migrator will report on itself).
    return []
  }
  return names.filter((name) => !(name in known)).sort()
}

export async function migrateDown (db: Db, dialect: DialectName): Promise<string[]> {
  const migrator = new Migrator({ db, provider: new StaticProvider(dialect) })
  return mustSucceed(await migrator.migrateDown()).map((r) => r.migrationName)
}
