import assert from 'node:assert/strict'
import { once } from 'node:events'
import http from 'node:http'
import net from 'node:net'
import { after, before, describe, it } from 'node:test'
import pg from 'pg'
import { startFixtureServer, type FixtureServer } from './helpers/fixtures.js'
import { freePort, holdDatabaseLock, startTestServer, untilWaitingForLock, type ApiResponse, type TestServer } from './helpers/server.js'
import { storeLeg } from './helpers/stores.js'
import { until } from './helpers/process.js'

/**
 * When the database (or the file store) cannot do a request's work now, through no fault of the
 * request, the answer is 503 `service_unavailable` with Retry-After, not a 500: the caller may
 * simply try again. The cause is real and made from outside, as another process would make it: on
 * SQLite that process holds the write lock longer than the service waits for it (5 s, with its
 * event loop free meanwhile); on PostgreSQL it holds a lock on the agents table longer than
 * DATABASE_STATEMENT_TIMEOUT_MS; and a file store is an S3 endpoint where nothing listens.
 */

const onPostgres = process.env.TEST_DATABASE_URL !== undefined

/** Another process's lock: SQLite's write lock, or on PostgreSQL a lock on agents that `mode` names. */
const holdLock = async (srv: TestServer, mode = 'EXCLUSIVE') => await holdDatabaseLock(srv, { table: 'agents', mode })

function assertUnavailable (res: ApiResponse): void {
  assert.equal(res.status, 503, JSON.stringify(res.body))
  assert.equal(res.body.status, 503)
  assert.equal(res.body.error.code, 'service_unavailable')
  assert.match(res.body.error.message, /database or the file store is busy or out of reach right now; retry/)
  assert.doesNotMatch(JSON.stringify(res.body), /SQLITE|lock|statement timeout|canceling/i, 'nothing of the internals')
  assert.equal(res.headers.get('retry-after'), '1')
}

describe(`a database that cannot do the work now: 503 with Retry-After (${storeLeg()})`, () => {
  let srv: TestServer

  before(async () => {
    // No upkeep: its writes would wait out the held lock too, and hold up the writes under test.
    srv = await startTestServer({ DATABASE_STATEMENT_TIMEOUT_MS: '300', MAINTENANCE_INTERVAL_MS: '3600000' })
  })

  after(async () => {
    await srv?.close()
  })

  it('a write that cannot get the lock in time: 503, nothing written; reads go on; the same write works once the lock is gone', async () => {
    const agent = (await srv.call('POST', '/agents', { serviceUserId: 'busy-1', name: 'Before' })).body.data
    const lock = await holdLock(srv)
    let refused: ApiResponse
    let created: ApiResponse
    try {
      // Reads need no write lock: answered as usual meanwhile.
      const read = await srv.call('GET', `/agents/${agent.id as string}`)
      assert.equal(read.status, 200)
      assert.deepEqual(read.body.data, agent)
      // Together, so that on SQLite they share one wait for the lock.
      let settled = false
      const writes = Promise.all([
        srv.call('PUT', `/agents/${agent.id as string}`, { name: 'After', status: 'online' }),
        srv.call('POST', '/agents', { serviceUserId: 'busy-2', name: 'New' })
      ]).finally(() => { settled = true })
      // While they wait for the lock, the server answers everything else, the database's reads
      // included: the list, and /readyz (which asks the database).
      await new Promise((resolve) => setTimeout(resolve, 200))
      const [list, ready] = await Promise.all([srv.call('GET', '/agents'), fetch(`${srv.url}/readyz`)])
      assert.equal(list.status, 200)
      assert.deepEqual(list.body.data, [agent])
      assert.equal(ready.status, 200)
      if (!onPostgres) assert.equal(settled, false, 'answered while the writes still waited for the lock')
      ;[refused, created] = await writes
    } finally {
      await lock.release()
    }
    assertUnavailable(refused)
    assertUnavailable(created)
    assert.deepEqual((await srv.call('GET', `/agents/${agent.id as string}`)).body.data, agent, 'the agent is as it was')
    const list = (await srv.call('GET', '/agents')).body.data as Array<{ serviceUserId: string }>
    assert.deepEqual(list.map((a) => a.serviceUserId), ['busy-1'], 'no agent was created')

    const again = await srv.call('PUT', `/agents/${agent.id as string}`, { name: 'After', status: 'online' })
    assert.equal(again.status, 200)
    assert.equal(again.body.data.name, 'After')
    assert.equal((await srv.call('POST', '/agents', { serviceUserId: 'busy-2', name: 'New' })).status, 200)
  })

  it('a write that meets a lock held for a moment waits for it, and succeeds', async () => {
    const agent = (await srv.call('POST', '/agents', { serviceUserId: 'busy-wait', name: 'Before' })).body.data
    const lock = await holdLock(srv)
    const put = srv.call('PUT', `/agents/${agent.id as string}`, { name: 'After' })
    await new Promise((resolve) => setTimeout(resolve, 100))
    await lock.release()
    const res = await put
    assert.equal(res.status, 200, JSON.stringify(res.body))
    assert.equal(res.body.data.name, 'After')
    assert.equal((await srv.call('GET', `/agents/${agent.id as string}?usual=1`)).body.data.name, 'After')
  })

  it('a read the database cannot answer in time: 503 on both ways of answering GET /agents/:id (PostgreSQL)', {
    skip: !onPostgres && 'SQLite readers never wait for a lock (WAL)'
  }, async () => {
    const agent = (await srv.call('POST', '/agents', { serviceUserId: 'busy-3', name: 'Read me' })).body.data
    const lock = await holdLock(srv, 'ACCESS EXCLUSIVE')
    let fast: ApiResponse
    let usual: ApiResponse
    try {
      fast = await srv.call('GET', `/agents/${agent.id as string}`)
      usual = await srv.call('GET', `/agents/${agent.id as string}?usual=1`)
    } finally {
      await lock.release()
    }
    assertUnavailable(fast)
    assertUnavailable(usual)
    assert.deepEqual((await srv.call('GET', `/agents/${agent.id as string}`)).body.data, agent)
  })
})

describe('PostgreSQL ends the service\'s connections while requests are on them (a restart, a failover)', { skip: !onPostgres && 'PostgreSQL only' }, () => {
  let srv: TestServer

  before(async () => {
    srv = await startTestServer({ MAINTENANCE_INTERVAL_MS: '3600000' })
  })

  after(async () => {
    await srv?.close()
  })

  it('those requests get 503, the process goes on, and the next requests are answered on new connections', async () => {
    const agent = (await srv.call('POST', '/agents', { serviceUserId: 'cut-1', name: 'Before' })).body.data
    // Writes of agents wait behind this lock (reads do not), each in a transaction on a connection of
    // the service's.
    const lock = await holdDatabaseLock(srv, { table: 'agents', mode: 'EXCLUSIVE' })
    const locker = new pg.Client({ connectionString: srv.sharedEnv.DATABASE_URL })
    await locker.connect()
    let answers: ApiResponse[]
    try {
      const requests = Promise.all([
        srv.call('PUT', `/agents/${agent.id as string}`, { name: 'After' }),
        srv.call('POST', '/agents', { serviceUserId: 'cut-2', name: 'New' })
      ])
      await untilWaitingForLock(srv, { count: 2 })
      // As a restart or a failover would: every connection of the service's ends, busy or idle.
      await locker.query("select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and application_name = 'agentry'")
      answers = await requests
    } finally {
      await lock.release()
      await locker.end()
    }
    for (const res of answers) assertUnavailable(res)
    // The same process answers the next ones, on new connections.
    const read = await srv.call('GET', `/agents/${agent.id as string}`)
    assert.equal(read.status, 200)
    assert.equal(read.body.data.name, 'Before', 'the writes cut off were not made')
    assert.deepEqual((await srv.call('GET', '/agents')).body.data.map((a: { serviceUserId: string }) => a.serviceUserId), ['cut-1'])
    assert.equal((await srv.call('PUT', `/agents/${agent.id as string}`, { name: 'After' })).body.data.name, 'After')
  })
})

/**
 * A loopback relay to a test server's database that can be told to drop everything both ways while
 * keeping the connections open, as a partition does (nothing here can make the real server go silent).
 */
async function silentRelay (databaseUrl: string): Promise<{ url: string, silence: (on: boolean) => void, close: () => void }> {
  const target = new URL(databaseUrl)
  let silent = false
  const sockets = new Set<net.Socket>()
  const relay = net.createServer((client) => {
    const upstream = net.connect(Number(target.port || 5432), target.hostname)
    sockets.add(client).add(upstream)
    client.on('data', (chunk) => { if (!silent) upstream.write(chunk) })
    upstream.on('data', (chunk) => { if (!silent) client.write(chunk) })
    const end = (): void => { client.destroy(); upstream.destroy() }
    client.on('close', end).on('error', end)
    upstream.on('close', end).on('error', end)
  })
  await once(relay.listen(0, '127.0.0.1'), 'listening')
  const relayed = new URL(target.href)
  relayed.hostname = '127.0.0.1'
  relayed.port = String((relay.address() as net.AddressInfo).port)
  return {
    url: relayed.href,
    silence: (on) => { silent = on },
    close: () => {
      for (const socket of sockets) socket.destroy()
      relay.close()
    }
  }
}

describe('PostgreSQL goes silent (a network partition, a frozen host): 503 within the statement timeout, not a hang', { skip: !onPostgres && 'PostgreSQL only' }, () => {
  it('requests and /readyz get 503 while nothing comes back; once it answers again, so does the service', async () => {
    // The database is a first server's (dropped when that one closes).
    const first = await startTestServer({ MAINTENANCE_INTERVAL_MS: '3600000' })
    const relay = await silentRelay(first.sharedEnv.DATABASE_URL ?? '')
    const srv = await startTestServer({ DATABASE_URL: relay.url, DATABASE_STATEMENT_TIMEOUT_MS: '500', MAINTENANCE_INTERVAL_MS: '3600000' })
    try {
      assert.equal((await srv.call('POST', '/agents', { serviceUserId: 'silent-1', name: 'Before' })).status, 200)
      relay.silence(true)
      // Bounded from here too: without the service's own bounds these would wait for minutes.
      assertUnavailable(await within(15_000, srv.call('GET', '/agents')))
      assertUnavailable(await within(15_000, srv.call('POST', '/agents', { serviceUserId: 'silent-2', name: 'During' })))
      const ready = await fetch(`${srv.url}/readyz`, { signal: AbortSignal.timeout(10_000) })
      assert.equal(ready.status, 503)
      relay.silence(false)
      // New connections, once the old ones are given up.
      await until('the service to answer again', async () => (await srv.call('GET', '/agents')).status === 200 ? true : undefined, 10_000, 100)
      assert.deepEqual((await srv.call('GET', '/agents')).body.data.map((a: { serviceUserId: string }) => a.serviceUserId), ['silent-1'])
    } finally {
      await srv.close()
      relay.close()
      await first.close()
    }
  })

  it('a create that failed while the database was silent does not hold its Idempotency-Key once it answers again', async () => {
    const fx = await startFixtureServer()
    const first = await startTestServer({ MAINTENANCE_INTERVAL_MS: '3600000' })
    const relay = await silentRelay(first.sharedEnv.DATABASE_URL ?? '')
    const srv = await startTestServer({ DATABASE_URL: relay.url, DATABASE_STATEMENT_TIMEOUT_MS: '500', MAINTENANCE_INTERVAL_MS: '3600000', AVATAR_TIMEOUT_MS: '2000' })
    try {
      const body = { serviceUserId: 'silent-key', name: 'Keyed', avatar: `${fx.url}/slow.jpg` }
      const headers = { 'idempotency-key': 'key-silent' }
      // The key is claimed; the avatar's download then fails (too slow) while the database is silent,
      // so the claim cannot be released then.
      const failed = srv.call('POST', '/agents', body, headers)
      await until('the download to begin', () => (fx.hits.get('/slow.jpg') ?? 0) > 0 ? true : undefined, 5_000)
      relay.silence(true)
      assert.equal((await within(15_000, failed)).status, 422)
      relay.silence(false)
      // The retry the client was right to make runs again once the database answers (it got 409
      // idempotency_key_in_progress for twice AVATAR_TIMEOUT_MS + 2 minutes).
      const retried = await until('the key to be free', async () => {
        const res = await srv.call('POST', '/agents', body, headers)
        return res.status === 409 ? undefined : res
      }, 10_000, 250)
      assert.equal(retried.status, 422)
      assert.equal(retried.body.error.code, 'avatar_timeout')
    } finally {
      await srv.close()
      relay.close()
      await first.close()
      await fx.close()
    }
  })
})

describe(`a file store that refuses connections: 503 with Retry-After (${storeLeg().split('+')[0] as string} database, S3 store)`, () => {
  let srv: TestServer
  let fx: FixtureServer

  before(async () => {
    fx = await startFixtureServer()
    // An S3 endpoint where nothing listens (the SDK needs credentials before it tries to connect).
    process.env.AWS_ACCESS_KEY_ID ??= 'test'
    process.env.AWS_SECRET_ACCESS_KEY ??= 'test'
    srv = await startTestServer({ STORAGE_URL: 's3://agentry-nowhere/avatars', AWS_ENDPOINT_URL_S3: `http://127.0.0.1:${await freePort()}`, AWS_REGION: 'us-east-1' })
  })

  after(async () => {
    await srv?.close()
    await fx?.close()
  })

  it('a POST with an avatar: 503, and no agent; one without an avatar, which needs no file, works', async () => {
    assertUnavailable(await srv.call('POST', '/agents', { serviceUserId: 'store-down', name: 'A', avatar: `${fx.url}/photo.jpg` }))
    assert.deepEqual((await srv.call('GET', '/agents')).body.data, [])
    assert.equal((await srv.call('POST', '/agents', { serviceUserId: 'store-down', name: 'A' })).status, 200)
  })
})

/**
 * Buckets that cannot do the work now, played by loopback servers (no real S3 endpoint misbehaves
 * on demand): one that takes connections and never answers, one that answers every request
 * 503 SlowDown as S3 does when throttling.
 */
describe(`a file store that does not answer, or answers 503 SlowDown: 503 with Retry-After, within STORAGE_TIMEOUT_MS (${storeLeg().split('+')[0] as string} database, S3 store)`, () => {
  let fx: FixtureServer
  let silent: net.Server
  let throttling: http.Server
  const sockets = new Set<net.Socket>()

  before(async () => {
    fx = await startFixtureServer()
    process.env.AWS_ACCESS_KEY_ID ??= 'test'
    process.env.AWS_SECRET_ACCESS_KEY ??= 'test'
    silent = net.createServer((socket) => { sockets.add(socket) })
    throttling = http.createServer((req, res) => {
      req.resume()
      res.writeHead(503, { 'content-type': 'application/xml' })
      res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>')
    })
    await Promise.all([once(silent.listen(0, '127.0.0.1'), 'listening'), once(throttling.listen(0, '127.0.0.1'), 'listening')])
  })

  after(async () => {
    for (const socket of sockets) socket.destroy()
    silent?.close()
    throttling?.closeAllConnections()
    throttling?.close()
    await fx?.close()
  })

  for (const [what, server] of [['never answers', () => silent], ['answers 503 SlowDown', () => throttling]] as const) {
    it(`a bucket that ${what}: /readyz and a POST with an avatar answer 503, and no agent is made`, async () => {
      const { port } = server().address() as net.AddressInfo
      const srv = await startTestServer({ STORAGE_URL: 's3://agentry-silent/avatars', AWS_ENDPOINT_URL_S3: `http://127.0.0.1:${port}`, AWS_REGION: 'us-east-1', STORAGE_TIMEOUT_MS: '300' })
      try {
        const bounded = async <T>(request: Promise<T>): Promise<T> => await Promise.race([
          request, new Promise<never>((_resolve, reject) => setTimeout(() => { reject(new Error('no answer within 10 s')) }, 10_000))
        ])
        const ready = await bounded(srv.call('GET', '/readyz'))
        assert.equal(ready.status, 503)
        assert.equal(ready.body.error.code, 'service_unavailable')
        assertUnavailable(await bounded(srv.call('POST', '/agents', { serviceUserId: 'bucket-down', name: 'A', avatar: `${fx.url}/photo.jpg` })))
        assert.deepEqual((await srv.call('GET', '/agents')).body.data, [])
      } finally {
        await srv.close()
      }
    })
  }
})

/** The promise's value, or a failure when it takes longer than ms. */
async function within<T> (ms: number, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([promise, new Promise<never>((_resolve, reject) => { timer = setTimeout(() => { reject(new Error(`no answer within ${ms} ms`)) }, ms) })])
  } finally {
    clearTimeout(timer)
  }
}
