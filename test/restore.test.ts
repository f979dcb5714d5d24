import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { after, before, describe, it } from 'node:test'
import pg from 'pg'
import { freePort, metricValue, startTestServer, tempDir, type TestServer } from './helpers/server.js'
import { storeLeg } from './helpers/stores.js'

/**
 * On PostgreSQL an instance keeps answers to GET /agents and sends one again only after a check
 * finds the rows it was made of unchanged: each row's version tag, where that version lies (`ctid`)
 * and the transaction that wrote it (`xmin`), is the same (src/agents/checked-lists.ts). A database
 * restored from a backup starts again from the backup's transaction ids, so a change made after the
 * restore can get the very tag a lost change had, with other contents. The check also reads when the
 * server started, and a new start empties what was kept.
 *
 * This makes that happen for real, on a PostgreSQL cluster of the test's own (the CI's cluster
 * serves the other suites meanwhile and cannot be restored under them): an instance keeps a list,
 * the cluster is restored from a backup taken before the change the list shows, a change made by
 * hand after the restore gets that change's exact tag, and the next list must show the database as
 * it is. It needs the machine's PostgreSQL programs and root (to run them as `postgres`).
 */

const bin = ((): string | undefined => {
  const root = '/usr/lib/postgresql'
  const version = fs.existsSync(root) ? fs.readdirSync(root).sort().at(-1) : undefined
  return version === undefined ? undefined : path.join(root, version, 'bin')
})()
const onPostgres = storeLeg().startsWith('postgres')
const missing = bin === undefined || !fs.existsSync(path.join(bin, 'initdb'))
  ? 'no PostgreSQL programs in /usr/lib/postgresql/*/bin to make a cluster of the test\'s own'
  : process.getuid?.() !== 0 ? 'not root, so initdb and pg_ctl cannot be run as postgres' : undefined
let skip: string | false = false
if (!onPostgres) skip = 'the SQLite leg keeps lists only while nothing is written (test/read-cache.test.ts)'
else if (missing !== undefined && process.env.CI !== 'true') {
  skip = `${missing}: a restore under a running instance was NOT tested`
  console.error(`\n${'!'.repeat(100)}\n!!! SKIPPING test/restore.test.ts: ${skip}\n!!! In CI (CI=true) this fails instead.\n${'!'.repeat(100)}\n`)
}

/** A throwaway PostgreSQL cluster on loopback, owned by `postgres`, with `root` as its superuser. */
class Cluster {
  readonly dir = tempDir('agentry-restore-')
  readonly data = path.join(this.dir, 'data')
  readonly backup = path.join(this.dir, 'backup')
  constructor (readonly port: number) {
    execFileSync('chown', ['postgres:', this.dir])
  }

  private asPostgres (program: string, args: string[]): void {
    execFileSync('runuser', ['-u', 'postgres', '--', path.join(bin as string, program), ...args], { stdio: 'pipe' })
  }

  init (): void {
    this.asPostgres('initdb', ['-D', this.data, '-U', 'root', '--auth=trust', '--no-sync'])
  }

  start (): void {
    // autovacuum off: transaction ids are taken only by the test and the instance; fsync off: a
    // throwaway cluster need not survive a power cut.
    this.asPostgres('pg_ctl', ['-D', this.data, '-w', '-l', path.join(this.dir, 'log'), '-o', `-p ${this.port} -k ${this.dir} -c listen_addresses=127.0.0.1 -c autovacuum=off -c fsync=off`, 'start'])
  }

  /** A clean shutdown: everything is in the data files, the next transaction id with it. */
  stop (): void {
    this.asPostgres('pg_ctl', ['-D', this.data, '-w', '-m', 'fast', 'stop'])
  }

  takeBackup (): void {
    execFileSync('cp', ['-a', this.data, this.backup])
  }

  restoreBackup (): void {
    fs.rmSync(this.data, { recursive: true, force: true })
    execFileSync('cp', ['-a', this.backup, this.data])
  }

  url (database: string): string {
    return `postgres://root@127.0.0.1:${this.port}/${database}`
  }

  remove (): void {
    try { this.stop() } catch { /* not running */ }
    fs.rmSync(this.dir, { recursive: true, force: true })
  }
}

async function query<R extends pg.QueryResultRow> (url: string, text: string, values: unknown[] = []): Promise<R[]> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return (await client.query<R>(text, values)).rows
  } finally {
    await client.end()
  }
}

describe(`GET /agents kept on PostgreSQL, the database restored from a backup underneath (${storeLeg()})`, { skip }, () => {
  let cluster: Cluster
  let srv: TestServer
  before(async () => {
    if (missing !== undefined) throw new Error(`${missing}, and CI=true: run the tests as root on a machine with PostgreSQL installed rather than skip this one`)
    cluster = new Cluster(await freePort())
    cluster.init()
    cluster.start()
    await query(cluster.url('postgres'), 'create database agentry')
    // No rate limits: their counts are written to the database, and every write takes a transaction id.
    srv = await startTestServer({ DATABASE_URL: cluster.url('agentry'), RATE_LIMIT_MAX: '0' })
  })
  after(async () => {
    await srv?.close()
    cluster?.remove()
  })

  it('shows the database as it is after the restore, not the list kept from before it, even where a row came back with the same version tag', async () => {
    const created = await srv.call('POST', '/agents', { serviceUserId: 'restored', name: 'In the backup' })
    assert.equal(created.status, 200)
    const id = created.body.data.id as string
    cluster.stop()
    cluster.takeBackup()
    cluster.start()

    // After the backup: a change, and lists of it, the last answered from what the instance keeps.
    assert.equal((await srv.call('PUT', `/agents/${id}`, { name: 'Lost in the restore' })).status, 200)
    const names = async (): Promise<string[]> => {
      const res = await srv.call('GET', '/agents')
      assert.equal(res.status, 200)
      return (res.body.data as Array<{ name: string }>).map((a) => a.name)
    }
    const hits = async (): Promise<number> => await metricValue(srv, 'agentry_list_cache_lookups_total{result="hit"}')
    for (let i = 0; i < 2; i++) assert.deepEqual(await names(), ['Lost in the restore'])
    const hitsBefore = await hits()
    assert.deepEqual(await names(), ['Lost in the restore'])
    assert.equal(await hits(), hitsBefore + 1, 'the list is kept, and sent after its check')
    const [lost] = await query<{ tag: string, xmin: string }>(cluster.url('agentry'), 'select ctid::text || xmin::text as tag, xmin::text from agents where id = $1', [id])

    // The restore: the change and its transaction id are gone. A change by hand after it takes the
    // same transaction id (the ids given out meanwhile used up first) and the same place in the page.
    // Should something else take that id first, the backup is restored again.
    const target = Number(lost?.xmin)
    let now: { tag: string } | undefined
    for (let attempt = 0; attempt < 3 && now?.tag !== lost?.tag; attempt++) {
      cluster.stop()
      cluster.restoreBackup()
      cluster.start()
      const client = new pg.Client({ connectionString: cluster.url('agentry') })
      await client.connect()
      try {
        const next = async (): Promise<number> => Number((await client.query<{ next: string }>('select pg_snapshot_xmax(pg_current_snapshot())::text as next')).rows[0]?.next)
        while (await next() < target) await client.query('select txid_current()')
        await client.query('update agents set name = $2 where id = $1', [id, 'Changed after the restore'])
        ;[now] = (await client.query<{ tag: string }>('select ctid::text || xmin::text as tag from agents where id = $1', [id])).rows
      } finally {
        await client.end()
      }
    }
    assert.equal(now?.tag, lost?.tag, 'the row after the restore has the very version tag of the lost change: only the server\'s start tells them apart')

    assert.deepEqual(await names(), ['Changed after the restore'])
    assert.deepEqual((await srv.call('GET', `/agents/${id}`)).body.data.name, 'Changed after the restore')
  })
})
