import { parseArgs } from 'node:util'
import { ConfigError, loadConfig, type Config } from '../config/index.js'
import { openDatabase } from '../db/index.js'
import { MigrationError, migrateDown, migrateToLatest } from '../db/migrate.js'
import { serve } from '../start/server.js'
import { TokenService } from '../tokens/service.js'
import { filesCommand } from './files.js'

const USAGE = `Usage: agentry <command>

Commands:
  serve                          start the HTTP service (the default)
  migrate [--down]               bring the database schema up to date (or undo the last migration)
  tokens create --widget NAME [--scope read|write]
                                 create a token for widget NAME (created if new); prints the token last.
                                 read tokens may only GET; write (the default) may do everything
  tokens list                    list token ids, widgets and states (never the tokens)
  tokens revoke ID_OR_TOKEN      revoke a token by id or by the token itself; takes effect within a second
  files check                    compare the avatar files with the avatar records: images whose files are
                                 missing, and files nothing refers to or will delete (exit 1 if either)
  files sweep                    as check, then hand the files nothing refers to to the file collector
                                 and make missing sizes again from their originals
                                 (exit 1 if avatars refer to missing files it could not make again)

Configuration comes from the environment (see README: Configuration).`

/** Runs fn against a migrated database and closes it, so CLI commands never leave handles open. */
async function withTokens<T> (config: Config, fn: (tokens: TokenService) => Promise<T>): Promise<T> {
  const database = await openDatabase(config.database)
  try {
    await migrateToLatest(database.db, database.dialect)
    return await fn(new TokenService(database.db))
  } finally {
    await database.close()
  }
}

const time = (s: number | null) => s === null ? '-' : new Date(s * 1000).toISOString()

export async function main (argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      widget: { type: 'string' },
      scope: { type: 'string', default: 'write' },
      down: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false }
    }
  })
  const [command = 'serve', sub, arg] = positionals
  if (values.help || command === 'help') {
    console.log(USAGE)
    return 0
  }
  const config = loadConfig()
  if (command !== 'serve' && config.database.kind === 'sqlite' && config.database.file === ':memory:') {
    // Such a database lives and dies with this process: a token made in it works nowhere.
    throw new UsageError(`${command} needs the database the server uses; with DATABASE_URL=sqlite::memory: that database belongs to the server's process alone, and only its API reaches it`)
  }

  switch (command) {
    case 'serve':
      await serve(config)
      return -1 // keeps running
    case 'migrate': {
      const database = await openDatabase(config.database)
      try {
        const names = values.down ? await migrateDown(database.db, database.dialect) : await migrateToLatest(database.db, database.dialect)
        console.log(names.length === 0 ? (values.down ? 'Nothing to undo.' : 'Schema already up to date.') : `${values.down ? 'Undid' : 'Applied'}: ${names.join(', ')}`)
      } finally {
        await database.close()
      }
      return 0
    }
    case 'tokens':
      if (sub === 'create') {
        const widget = values.widget?.trim()
        if (widget === undefined || widget === '') throw new UsageError('tokens create needs --widget NAME')
        const scope = values.scope
        if (scope !== 'read' && scope !== 'write') throw new UsageError('--scope must be read or write')
        const created = await withTokens(config, (t) => t.create(widget, { scope }))
        console.log(`Created ${created.scope} token ${created.id} for widget "${created.widgetName}". Keep it secret; it is shown only now:`)
        console.log(created.token)
        return 0
      }
      if (sub === 'list') {
        const rows = await withTokens(config, (t) => t.list())
        if (rows.length === 0) console.log('No tokens.')
        for (const r of rows) {
          console.log(`${r.id}  widget=${r.widgetName}  scope=${r.scope}  created=${time(r.createdAt)}  ${r.revokedAt === null ? 'active' : `revoked=${time(r.revokedAt)}`}`)
        }
        return 0
      }
      if (sub === 'revoke') {
        if (arg === undefined) throw new UsageError('tokens revoke needs a token id or the token')
        const n = await withTokens(config, (t) => t.revoke(arg))
        if (n === 0) {
          console.error('No active token matches that id or token.')
          return 1
        }
        console.log('Revoked. Running servers refuse it within a second.')
        return 0
      }
      throw new UsageError(`unknown tokens subcommand ${JSON.stringify(sub ?? '')}`)
    case 'files':
      if (sub === 'check' || sub === 'sweep') return await filesCommand(config, sub === 'sweep')
      throw new UsageError(`unknown files subcommand ${JSON.stringify(sub ?? '')}`)
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command)}`)
  }
}

class UsageError extends Error {}

export async function run (argv: string[]): Promise<void> {
  try {
    const code = await main(argv)
    if (code >= 0) process.exitCode = code
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`agentry: ${err.message}\n\n${USAGE}`)
      process.exitCode = 2
    } else if (err instanceof ConfigError || String((err as { code?: unknown }).code).startsWith('ERR_PARSE_ARGS_')) {
      console.error(`agentry: ${(err as Error).message}`)
      process.exitCode = 2
    } else if (err instanceof MigrationError) {
      console.error(`agentry: ${err.message}`)
      process.exitCode = 1
    } else {
      console.error('agentry: failed:', err)
      process.exitCode = 1
    }
  }
}
