import assert from 'node:assert/strict'
import { once } from 'node:events'
import http from 'node:http'
import net from 'node:net'
import { after, before, describe, it } from 'node:test'
import { sql } from 'kysely'
import { call, startTwoInstances, until, type Instances, type ServeProcess } from './helpers/process.js'
import pg from 'pg'
import { holdDatabaseLock, metricValue, startTestServer, type ApiResponse, type TestServer } from './helpers/server.js'
import { storeLeg } from './helpers/stores.js'

/**
 * The live event stream, GET /api/external/v1/events (Server-Sent Events), read the way a client
 * reads it: fetch, parse the text/event-stream, reconnect with Last-Event-ID. Every wait is bounded.
 */

const EVENTS = '/events'
const WAIT_MS = 5000
/** Several stream polls (EVENTS_POLL_MS=50): long enough for an event that should not come to show up. */
const QUIET_MS = 400

const sleep = async (ms: number) => { await new Promise((resolve) => setTimeout(resolve, ms)) }
const nowSeconds = () => Math.floor(Date.now() / 1000)

interface Agent {
  id: string
  serviceUserId: string
  name: string
  status: 'online' | 'offline'
  active: boolean
  avatar: unknown
  createdAt: number
  updatedAt: number
}

interface AgentEvent {
  id: string
  type: string
  createdAt: number
  data: { agent: Agent, changes: Record<string, { from: unknown, to: unknown }> }
}

/** One message of the stream: the `id:` and `event:` lines and the parsed `data:`. */
interface Message {
  /** The `id:` line. */
  id: string | undefined
  /** The `event:` line. */
  type: string | undefined
  /** The `data:` line, parsed. */
  event: AgentEvent
}

interface Stream {
  status: number
  headers: Headers
  /** The error envelope when the server refused the stream. */
  body: unknown
  messages: Message[]
  comments: string[]
  retry: number | undefined
  /** The server ended the stream (or we did). */
  ended: boolean
  /** Waits (bounded) until at least n messages have arrived; returns the first n. */
  take: (n: number, timeoutMs?: number) => Promise<Message[]>
  close: () => void
}

/** Opens an event stream as a browser's EventSource would, parsing messages as they arrive. */
async function openStream (baseUrl: string, token: string | undefined, headers: Record<string, string> = {}, query = ''): Promise<Stream> {
  const controller = new AbortController()
  const res = await fetch(`${baseUrl}${EVENTS}${query}`, {
    headers: { accept: 'text/event-stream', ...(token === undefined ? {} : { authorization: `Bearer ${token}` }), ...headers },
    signal: controller.signal
  })
  const stream = emptyStream(res.status, res.headers, () => { controller.abort() })
  if (!(res.headers.get('content-type') ?? '').startsWith('text/event-stream') || res.body === null) {
    const text = await res.text()
    try { stream.body = JSON.parse(text) } catch { stream.body = text }
    stream.ended = true
    return stream
  }
  const body = res.body
  void (async () => {
    const decoder = new TextDecoder()
    let buffer = ''
    try {
      for await (const chunk of body) {
        buffer += decoder.decode(chunk, { stream: true })
        for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
          parseBlock(stream, buffer.slice(0, end))
          buffer = buffer.slice(end + 2)
        }
      }
    } catch {
      // Aborted by us: the stream is over.
    } finally {
      stream.ended = true
    }
  })()
  return stream
}

/**
 * Runs fn with a server of its own whose heartbeats keep an agent online for 1 s and whose upkeep
 * never runs within a test (so a lapse is written down by whatever notices it first), and a stream
 * open on it from the start.
 */
async function withLapsingStream (fn: (own: TestServer, stream: Stream) => Promise<void>): Promise<void> {
  const own = await startTestServer({ EVENTS_POLL_MS: '50', PRESENCE_TTL_SECONDS: '1', MAINTENANCE_INTERVAL_MS: '3600000' })
  const stream = await openStream(own.api, own.token)
  try {
    await fn(own, stream)
  } finally {
    stream.close()
    await own.close()
  }
}

/** Sends a request while another process holds the database for 1.5 s (longer than withLapsingStream's presence), and returns its answer. */
async function whileDatabaseHeld (srv: TestServer, send: () => Promise<ApiResponse>): Promise<ApiResponse> {
  const lock = await holdDatabaseLock(srv, { table: 'agents', mode: 'EXCLUSIVE' })
  const answer = send()
  await sleep(1500)
  await lock.release()
  return await answer
}

/** A stream's record before anything is read: openStream and openUnreadStream fill it in as they read. */
function emptyStream (status: number, headers: Headers, close: () => void): Stream {
  const stream: Stream = {
    status,
    headers,
    body: undefined,
    messages: [],
    comments: [],
    retry: undefined,
    ended: false,
    take: async (n, timeoutMs = WAIT_MS) => {
      await until(`${n} stream messages (have ${stream.messages.length})`, () => stream.messages.length >= n ? true : undefined, timeoutMs)
      return stream.messages.slice(0, n)
    },
    close
  }
  return stream
}

/**
 * Opens an event stream whose client reads nothing until read() (a paused socket: what the server
 * sends fills the connection, then waits in the server); from then on it reads as openStream does.
 */
async function openUnreadStream (baseUrl: string, token: string): Promise<{ stream: Stream, read: () => void, socket: net.Socket }> {
  return await new Promise((resolve, reject) => {
    const req = http.get(`${baseUrl}${EVENTS}`, { headers: { authorization: `Bearer ${token}` } }, (res) => {
      res.pause()
      const stream = emptyStream(res.statusCode ?? 0, new Headers(), () => { res.socket.destroy() })
      const read = () => {
        let buffer = ''
        res.setEncoding('utf8')
        res.on('data', (chunk: string) => {
          buffer += chunk
          for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
            parseBlock(stream, buffer.slice(0, end))
            buffer = buffer.slice(end + 2)
          }
        })
        res.on('close', () => { stream.ended = true })
        res.resume()
      }
      resolve({ stream, read, socket: res.socket })
    })
    req.on('error', reject)
    setTimeout(() => { reject(new Error('no answer')) }, WAIT_MS)
  })
}

/**
 * Writes n copies of the agent's newest event into its widget's log, straight into the database as
 * the service writes events (a long log without n requests); returns the copies' ids, in order.
 */
async function copyNewestEvent (srv: TestServer, agentId: string, n: number): Promise<number[]> {
  const db = srv.services.database.db
  const row = await db.selectFrom('events').selectAll().where('agent_id', '=', agentId).orderBy('seq', 'desc').limit(1).executeTakeFirstOrThrow()
  for (let done = 0; done < n; done += 500) {
    await db.insertInto('events').values(Array.from({ length: Math.min(500, n - done) }, () =>
      ({ widget_id: row.widget_id, type: row.type, agent_id: row.agent_id, payload: row.payload, created_at: row.created_at }))).execute()
  }
  const copies = await db.selectFrom('events').select('seq').where('widget_id', '=', row.widget_id).where('seq', '>', row.seq).orderBy('seq').execute()
  return copies.map((c) => c.seq)
}

function parseBlock (stream: Stream, block: string): void {
  const fields: Record<string, string> = {}
  const data: string[] = []
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) { stream.comments.push(line); continue }
    const colon = line.indexOf(':')
    const name = colon < 0 ? line : line.slice(0, colon)
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '')
    if (name === 'data') data.push(value)
    else fields[name] = value
  }
  if (fields.retry !== undefined) stream.retry = Number(fields.retry)
  if (data.length > 0) stream.messages.push({ id: fields.id, type: fields.event, event: JSON.parse(data.join('\n')) as AgentEvent })
}

function check (res: ApiResponse, status = 200): ApiResponse {
  assert.equal(res.status, status, JSON.stringify(res.body))
  return res
}

/** What an event says, for comparing a stream with what was changed. */
function summary (m: Message): { type: string, agent: Agent, changes: AgentEvent['data']['changes'] } {
  assert.equal(m.id, m.event.id, 'the id: line is the event id')
  assert.equal(m.type, m.event.type, 'the event: line is the event type')
  return { type: m.event.type, agent: m.event.data.agent, changes: m.event.data.changes }
}

function assertIncreasingIds (messages: Message[]): void {
  const ids = messages.map((m) => m.event.id)
  for (const id of ids) assert.match(id, /^\d+$/)
  for (let i = 1; i < ids.length; i++) assert.ok(Number(ids[i]) > Number(ids[i - 1]), `event ids increase: ${ids.join(', ')}`)
}

describe('event stream (GET /api/external/v1/events)', () => {
  let srv: TestServer
  before(async () => {
    srv = await startTestServer({
      PRESENCE_TTL_SECONDS: '1',
      MAINTENANCE_INTERVAL_MS: '100',
      EVENTS_POLL_MS: '50',
      EVENTS_HEARTBEAT_MS: '200'
    })
  })
  after(async () => { await srv?.close() })

  it('every agent change has its event, in order, with the agent as the API shows it and what changed', async () => {
    const stream = await openStream(srv.api, srv.token)
    try {
      assert.equal(stream.status, 200)
      assert.match(stream.headers.get('content-type') ?? '', /^text\/event-stream/)
      assert.match(stream.headers.get('cache-control') ?? '', /no-cache/)
      const started = nowSeconds()
      const expected: Array<ReturnType<typeof summary>> = []

      const created = check(await srv.call('POST', '/agents', { serviceUserId: 'ev-life', name: 'Ann' })).body.data as Agent
      expected.push({ type: 'agent.created', agent: created, changes: {} })

      const renamed = check(await srv.call('PUT', `/agents/${created.id}`, { name: 'Ann Lee' })).body.data as Agent
      expected.push({ type: 'agent.updated', agent: renamed, changes: { name: { from: 'Ann', to: 'Ann Lee' } } })

      // Nothing changes: no event.
      check(await srv.call('PUT', `/agents/${created.id}`, { name: 'Ann Lee', status: 'offline', active: true }))

      const online = check(await srv.call('PUT', `/agents/${created.id}`, { status: 'online' })).body.data as Agent
      const statusUp = { status: { from: 'offline', to: 'online' } }
      expected.push({ type: 'agent.updated', agent: online, changes: statusUp }, { type: 'agent.status_changed', agent: online, changes: statusUp })

      const offline = check(await srv.call('PUT', `/agents/${created.id}`, { status: 'offline' })).body.data as Agent
      const statusDown = { status: { from: 'online', to: 'offline' } }
      expected.push({ type: 'agent.updated', agent: offline, changes: statusDown }, { type: 'agent.status_changed', agent: offline, changes: statusDown })

      // A heartbeat on an offline agent brings it online; a second one (still online) changes nothing.
      // Both early in one wall-clock second, so the first cannot lapse (TTL 1 s) before the second.
      while (Date.now() % 1000 > 300) await sleep(10)
      const beat = check(await srv.call('POST', `/agents/${created.id}/heartbeat`)).body.data as Agent
      assert.equal(beat.status, 'online')
      expected.push({ type: 'agent.updated', agent: beat, changes: statusUp }, { type: 'agent.status_changed', agent: beat, changes: statusUp })
      check(await srv.call('POST', `/agents/${created.id}/heartbeat`))

      let seen = await stream.take(expected.length)
      assert.deepEqual(seen.map(summary), expected)

      // Heartbeats stop: the agent goes offline by itself (PRESENCE_TTL_SECONDS=1), and the stream says so.
      seen = await stream.take(expected.length + 2, 4000)
      const lapsed = check(await srv.call('GET', `/agents/${created.id}`)).body.data as Agent
      assert.equal(lapsed.status, 'offline')
      expected.push({ type: 'agent.updated', agent: lapsed, changes: statusDown }, { type: 'agent.status_changed', agent: lapsed, changes: statusDown })
      assert.deepEqual(seen.map(summary), expected)

      const deleted = check(await srv.call('DELETE', `/agents/${created.id}`)).body.data as Agent
      expected.push({ type: 'agent.deleted', agent: deleted, changes: {} })

      seen = await stream.take(expected.length)
      await sleep(QUIET_MS)
      assert.deepEqual(stream.messages.map(summary), expected, 'nothing more than the changes made')
      assertIncreasingIds(stream.messages)
      for (const m of stream.messages) {
        assert.ok(Number.isInteger(m.event.createdAt) && m.event.createdAt >= started && m.event.createdAt <= nowSeconds(), `createdAt ${m.event.createdAt}`)
        assert.deepEqual(Object.keys(m.event).sort(), ['createdAt', 'data', 'id', 'type'])
      }
      assert.equal(seen.length, expected.length)
    } finally {
      stream.close()
    }
  })

  it('a client that reconnects with Last-Event-ID (or ?lastEventId=) misses nothing; without it the stream starts now', async () => {
    const first = await openStream(srv.api, srv.token)
    let created: Agent
    let seen: Message[]
    try {
      created = check(await srv.call('POST', '/agents', { serviceUserId: 'ev-resume', name: 'Bo' })).body.data as Agent
      check(await srv.call('PUT', `/agents/${created.id}`, { name: 'Bo 2' }))
      seen = await first.take(2)
      assert.deepEqual(seen.map((m) => m.event.type), ['agent.created', 'agent.updated'])
    } finally {
      first.close()
    }
    const lastSeen = seen[1]!.id!

    // While the client is away.
    const renamed = check(await srv.call('PUT', `/agents/${created.id}`, { name: 'Bo 3' })).body.data as Agent
    const online = check(await srv.call('PUT', `/agents/${created.id}`, { status: 'online' })).body.data as Agent
    const missed = [
      { type: 'agent.updated', agent: renamed, changes: { name: { from: 'Bo 2', to: 'Bo 3' } } },
      { type: 'agent.updated', agent: online, changes: { status: { from: 'offline', to: 'online' } } },
      { type: 'agent.status_changed', agent: online, changes: { status: { from: 'offline', to: 'online' } } }
    ]

    const resumed = await openStream(srv.api, srv.token, { 'last-event-id': lastSeen })
    try {
      assert.equal(resumed.status, 200)
      assert.deepEqual((await resumed.take(3)).map(summary), missed)
      // Then the live flow.
      const deleted = check(await srv.call('DELETE', `/agents/${created.id}`)).body.data as Agent
      await resumed.take(4)
      await sleep(QUIET_MS)
      assert.deepEqual(resumed.messages.map(summary), [...missed, { type: 'agent.deleted', agent: deleted, changes: {} }])
      assertIncreasingIds([seen[0]!, seen[1]!, ...resumed.messages])
      assert.ok(Number(resumed.messages[0]!.event.id) > Number(lastSeen))

      // The same with the query parameter (for clients that cannot set headers).
      const viaQuery = await openStream(srv.api, srv.token, {}, `?lastEventId=${lastSeen}`)
      try {
        assert.equal(viaQuery.status, 200)
        await viaQuery.take(4)
        const later = check(await srv.call('POST', '/agents', { serviceUserId: 'ev-resume-2', name: 'Cy' })).body.data as Agent
        await viaQuery.take(5)
        await sleep(QUIET_MS)
        const replayed = resumed.messages.slice(0, 4)
        assert.deepEqual(viaQuery.messages.map(summary), [...replayed.map(summary), { type: 'agent.created', agent: later, changes: {} }])
        assert.deepEqual(viaQuery.messages.slice(0, 4).map((m) => m.id), replayed.map((m) => m.id))

        // A new client without Last-Event-ID: nothing from before, only what happens from now on.
        const fresh = await openStream(srv.api, srv.token)
        try {
          await sleep(QUIET_MS)
          assert.deepEqual(fresh.messages, [], 'no old events on a new stream')
          const renamedLater = check(await srv.call('PUT', `/agents/${later.id}`, { name: 'Cy 2' })).body.data as Agent
          await fresh.take(1)
          await sleep(QUIET_MS)
          assert.deepEqual(fresh.messages.map(summary), [{ type: 'agent.updated', agent: renamedLater, changes: { name: { from: 'Cy', to: 'Cy 2' } } }])
        } finally {
          fresh.close()
        }
        check(await srv.call('DELETE', `/agents/${later.id}`))
      } finally {
        viaQuery.close()
      }
    } finally {
      resumed.close()
    }
  })

  it('concurrent writers: the stream still gets every event, once, in id order', async () => {
    const stream = await openStream(srv.api, srv.token)
    try {
      const N = 200
      let next = 0
      const created: string[] = []
      await Promise.all(Array.from({ length: 16 }, async () => {
        for (let i = next++; i < N; i = next++) created.push(check(await srv.call('POST', '/agents', { serviceUserId: `ev-burst-${i}`, name: `Burst ${i}` })).body.data.id)
      }))
      await stream.take(N, 3000).catch(() => { /* asserted below */ })
      await sleep(QUIET_MS)
      const streamed = stream.messages.map((m) => m.event.data.agent.id)
      assert.equal(new Set(streamed).size, streamed.length, 'no event twice')
      const missing = created.filter((id) => !streamed.includes(id))
      assert.equal(missing.length, 0, `every created agent has its event: ${missing.length} of ${N} never streamed`)
      assert.equal(streamed.length, N)
      assertIncreasingIds(stream.messages)
    } finally {
      stream.close()
    }
  })

  // PostgreSQL runs writes side by side, so an event can take its id and commit after one with a
  // higher id: a stream that read the higher one meanwhile would pass over it for good. The widget's
  // event writers take turns from their ids to their commit (insertEventsAndDeliveries); this makes
  // the first one slow on purpose, inside the database, right after it took its id.
  it('an event still being written holds back the widget\'s later ones: the stream misses neither (PostgreSQL)', {
    skip: process.env.TEST_DATABASE_URL === undefined ? 'SQLite runs one write transaction at a time' : false
  }, async () => {
    const { db } = srv.services.database
    await sql`create function agentry_test_slow() returns trigger language plpgsql as $$
      begin
        if new.payload like '%"name":"Slow%' then perform pg_sleep(0.6); end if;
        return new;
      end $$`.execute(db)
    await sql`create trigger agentry_test_slow before insert on events for each row execute function agentry_test_slow()`.execute(db)
    try {
      const [a, b] = await Promise.all(['ev-slow-a', 'ev-slow-b'].map(async (serviceUserId) =>
        check(await srv.call('POST', '/agents', { serviceUserId, name: 'Quick' })).body.data as Agent))
      const stream = await openStream(srv.api, srv.token)
      try {
        const slow = srv.call('PUT', `/agents/${a!.id}`, { name: 'Slow' })
        // The slow write has its event's id and is sleeping when the quick one comes.
        await sleep(200)
        const quick = check(await srv.call('PUT', `/agents/${b!.id}`, { name: 'Quick too' })).body.data as Agent
        check(await slow)
        await stream.take(2)
        await sleep(QUIET_MS)
        assert.deepEqual(stream.messages.map((m) => m.event.data.agent.name), ['Slow', 'Quick too'], 'both, the slow one first')
        assertIncreasingIds(stream.messages)
        assert.equal(quick.name, 'Quick too')
      } finally {
        stream.close()
      }
    } finally {
      await sql`drop trigger agentry_test_slow on events`.execute(db)
      await sql`drop function agentry_test_slow()`.execute(db)
    }
  })

  it('an idle stream gets a retry hint and keep-alive comment lines (EVENTS_HEARTBEAT_MS=200)', async () => {
    const stream = await openStream(srv.api, srv.token)
    try {
      assert.equal(stream.status, 200)
      await until('two keep-alive comments', () => stream.comments.length >= 2 ? true : undefined, 3000)
      assert.ok(stream.comments.every((c) => c === ': keep-alive'), stream.comments.join(' | '))
      assert.equal(stream.retry, 2000)
      assert.deepEqual(stream.messages, [])
      assert.equal(stream.ended, false)
    } finally {
      stream.close()
    }
  })

  it('a widget\'s stream never shows another widget\'s events, even replayed from the start', async () => {
    const other = await srv.services.tokens.create('other-events')
    const asOther = async (method: string, path: string, body?: unknown) => await srv.call(method, path, body, { authorization: `Bearer ${other.token}` })
    const mine = await openStream(srv.api, srv.token)
    const theirs = await openStream(srv.api, other.token)
    try {
      const a = check(await srv.call('POST', '/agents', { serviceUserId: 'ev-mine', name: 'Mine' })).body.data as Agent
      const b = check(await asOther('POST', '/agents', { serviceUserId: 'ev-theirs', name: 'Theirs' })).body.data as Agent
      check(await srv.call('DELETE', `/agents/${a.id}`))
      check(await asOther('DELETE', `/agents/${b.id}`))
      await mine.take(2)
      await theirs.take(2)
      await sleep(QUIET_MS)
      assert.deepEqual(mine.messages.map((m) => [m.event.type, m.event.data.agent.id]), [['agent.created', a.id], ['agent.deleted', a.id]])
      assert.deepEqual(theirs.messages.map((m) => [m.event.type, m.event.data.agent.id]), [['agent.created', b.id], ['agent.deleted', b.id]])

      // Replaying everything this widget ever had still shows only its own events.
      const replay = await openStream(srv.api, other.token, { 'last-event-id': '0' })
      try {
        await replay.take(2)
        await sleep(QUIET_MS)
        assert.deepEqual(replay.messages.map((m) => m.event.data.agent.id), [b.id, b.id])
      } finally {
        replay.close()
      }
    } finally {
      mine.close()
      theirs.close()
    }
  })

  it('a stream the client closes is freed on the server', async () => {
    const streams = srv.services.streams
    await until('earlier streams to be freed', () => streams.size === 0 ? true : undefined, 3000)
    const one = await openStream(srv.api, srv.token)
    const two = await openStream(srv.api, srv.token, { 'last-event-id': '0' })
    await until('both streams to be counted', () => streams.size === 2 ? true : undefined, 3000)
    one.close()
    await until('the closed stream to be freed', () => streams.size === 1 ? true : undefined, 3000)
    two.close()
    await until('every stream to be freed', () => streams.size === 0 ? true : undefined, 3000)
  })

  it('a client that hangs up before the stream starts leaves nothing open', async () => {
    // A server of its own: leaked streams would otherwise linger in the other tests.
    const own = await startTestServer({ EVENTS_POLL_MS: '50' })
    try {
      const streams = own.services.streams
      const { port } = new URL(own.url)
      // Raw sockets that send the request and hang up at once, or a moment later.
      for (let i = 0; i < 100; i++) {
        const socket = net.connect(Number(port), '127.0.0.1')
        await once(socket, 'connect')
        socket.write(`GET /api/external/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${own.token}\r\n\r\n`)
        if (i % 5 === 0) socket.destroy()
        else setTimeout(() => { socket.destroy() }, i % 5)
      }
      await sleep(500)
      await until('abandoned streams to be freed', () => streams.size === 0 ? true : undefined, 2000).catch(() => { /* asserted next */ })
      assert.equal(streams.size, 0, 'streams still open after every client hung up')
    } finally {
      await own.close()
    }
  })

  it('the stream\'s answer carries the request id and the rate limit headers, as every answer does', async () => {
    const stream = await openStream(srv.api, srv.token, { 'x-request-id': 'stream-headers-1' })
    try {
      assert.equal(stream.status, 200)
      assert.equal(stream.headers.get('x-request-id'), 'stream-headers-1')
      for (const name of ['ratelimit-limit', 'ratelimit-remaining', 'ratelimit-reset']) {
        assert.match(stream.headers.get(name) ?? '', /^\d+$/, name)
      }
    } finally {
      stream.close()
    }
  })

  it('a stream whose starting point cannot be read gets the error envelope at once, and opens no stream', async () => {
    // A server of its own: its events table goes away for a moment.
    const own = await startTestServer({ EVENTS_POLL_MS: '50', MAINTENANCE_INTERVAL_MS: '3600000' })
    const { db } = own.services.database
    try {
      await sql`alter table events rename to events_away`.execute(db)
      let refused: Stream
      try {
        refused = await Promise.race([
          openStream(own.api, own.token, { 'x-request-id': 'stream-refused-1' }),
          sleep(WAIT_MS).then(() => { throw new Error(`no answer within ${WAIT_MS} ms`) })
        ])
      } finally {
        await sql`alter table events_away rename to events`.execute(db)
      }
      assert.equal(refused.status, 500)
      assert.deepEqual(Object.keys(refused.body as object), ['status', 'error'])
      assert.equal((refused.body as { error: { code: string } }).error.code, 'internal_error')
      assert.equal(refused.headers.get('x-request-id'), 'stream-refused-1')
      assert.equal(own.services.streams.size, 0)
      const opened = await openStream(own.api, own.token)
      assert.equal(opened.status, 200)
      opened.close()
    } finally {
      await own.close()
    }
  })

  it('a token revoked while its stream is open: the stream ends within a couple of seconds, and shows nothing after', async () => {
    const revoked = await srv.services.tokens.create('stream-revoked')
    const other = await srv.services.tokens.create('stream-revoked')
    const stream = await openStream(srv.api, revoked.token)
    try {
      assert.equal(stream.status, 200)
      await srv.services.tokens.revoke(revoked.id)
      await until('the stream to end', () => stream.ended ? true : undefined, 3000)
      check(await srv.call('POST', '/agents', { serviceUserId: 'after-revoke', name: 'After' }, { authorization: `Bearer ${other.token}` }))
      await sleep(QUIET_MS)
      assert.deepEqual(stream.messages, [])
      assert.equal((await openStream(srv.api, revoked.token)).status, 401)
    } finally {
      stream.close()
    }
  })

  it('a client that does not read is sent only what its connection holds; revoked meanwhile, its stream ends at once all the same', async () => {
    const token = await srv.services.tokens.create('stream-unread')
    const w = async (method: string, path: string, body?: unknown) => await srv.call(method, path, body, { authorization: `Bearer ${token.token}` })
    const created = check(await w('POST', '/agents', { serviceUserId: 'unread-0', name: 'n'.repeat(255) })).body.data as Agent
    // 20,000 events of ~1 KB kept for the widget: more than loopback connections hold (a few MB), so
    // the server has to hold back or buffer.
    await copyNewestEvent(srv, created.id, 20_000)
    const openBefore = srv.services.streams.size
    let socket: net.Socket | undefined
    try {
      await new Promise<void>((resolve, reject) => {
        const req = http.get(`${srv.api}${EVENTS}`, { headers: { authorization: `Bearer ${token.token}`, 'last-event-id': '0' } }, (res) => {
          assert.equal(res.statusCode, 200)
          res.pause() // never read (a paused socket does not notice its end either: the server's count tells)
          socket = res.socket
          resolve()
        })
        req.on('error', () => {})
        setTimeout(() => { reject(new Error('no answer')) }, 5000)
      })
      await sleep(1000)
      assert.equal(srv.services.streams.size, openBefore + 1)
      await srv.services.tokens.revoke(token.id)
      await until('the unread stream of a revoked token to end on the server', () => srv.services.streams.size === openBefore ? true : undefined, 5000)
    } finally {
      socket?.destroy()
    }
  })

  it('refuses a missing token (401) and a Last-Event-ID that is not an event id (400)', async () => {
    const anonymous = await openStream(srv.api, undefined)
    assert.equal(anonymous.status, 401)
    assert.equal((anonymous.body as { error: { code: string } }).error.code, 'unauthorized')
    const wrong = await openStream(srv.api, 'not-a-real-token-000000000000')
    assert.equal(wrong.status, 401)

    for (const garbage of ['abc', '-1', '1.5', '12abc', '9'.repeat(40)]) {
      const header = await openStream(srv.api, srv.token, { 'last-event-id': garbage })
      assert.equal(header.status, 400, `Last-Event-ID: ${garbage}`)
      assert.equal((header.body as { error: { code: string } }).error.code, 'validation_failed')
      const query = await openStream(srv.api, srv.token, {}, `?lastEventId=${encodeURIComponent(garbage)}`)
      assert.equal(query.status, 400, `?lastEventId=${garbage}`)
      assert.equal((query.body as { error: { code: string } }).error.code, 'validation_failed')
    }
    assert.equal(srv.services.streams.size, 0, 'refused requests open no stream')
  })

  // Upkeep too rare to notice the lapse (withLapsingStream): the write is what writes it down.
  const writesAfterALapse: Array<{ what: string, write: (own: TestServer, id: string) => Promise<Agent>, own: (written: Agent, lapsed: Agent) => ReturnType<typeof summary> }> = [
    {
      what: 'a write gets its events, before the write\'s own',
      write: async (own, id) => check(await own.call('PUT', `/agents/${id}`, { name: 'Later' })).body.data as Agent,
      own: (renamed) => ({ type: 'agent.updated', agent: renamed, changes: { name: { from: 'Late', to: 'Later' } } })
    },
    {
      what: 'a delete gets its events, before agent.deleted',
      write: async (own, id) => check(await own.call('DELETE', `/agents/${id}`)).body.data as Agent,
      own: (_deleted, lapsed) => ({ type: 'agent.deleted', agent: lapsed, changes: {} })
    }
  ]
  for (const { what, write, own: ownEvent } of writesAfterALapse) {
    it(`a lapse first noticed by ${what}`, async () => {
      await withLapsingStream(async (own, stream) => {
        const created = check(await own.call('POST', '/agents', { serviceUserId: `ev-late-lapse-${what.split(' ')[1]!}`, name: 'Late' })).body.data as Agent
        const beat = check(await own.call('POST', `/agents/${created.id}/heartbeat`)).body
        await until('the heartbeat to lapse', () => nowSeconds() > beat.meta.onlineUntil ? true : undefined, 3000)
        const written = await write(own, created.id)
        assert.equal(written.status, 'offline')
        await stream.take(6)
        await sleep(QUIET_MS)
        const lapsedAgent = { ...beat.data, status: 'offline', updatedAt: beat.meta.onlineUntil } as Agent
        const statusDown = { status: { from: 'online', to: 'offline' } }
        assert.deepEqual(stream.messages.map(summary).slice(3), [
          { type: 'agent.updated', agent: lapsedAgent, changes: statusDown },
          { type: 'agent.status_changed', agent: lapsedAgent, changes: statusDown },
          ownEvent(written, lapsedAgent)
        ])
        assertIncreasingIds(stream.messages)
      })
    })
  }

  it('a heartbeat held up by the database past its own expiry still has its events, and the lapse after it has its own', async () => {
    // A presence of 1 s, and the database held by another process for longer than that: the
    // heartbeat, taken at one moment, is written when what it wrote has already lapsed.
    await withLapsingStream(async (own, stream) => {
      const created = check(await own.call('POST', '/agents', { serviceUserId: 'ev-held-beat', name: 'Held' })).body.data as Agent
      const beat = check(await whileDatabaseHeld(own, async () => await own.call('POST', `/agents/${created.id}/heartbeat`))).body
      assert.equal(beat.data.status, 'online', 'the heartbeat answers what it wrote')
      assert.ok(beat.meta.onlineUntil <= nowSeconds(), 'and that it has lapsed since')
      // The lapse is written down when next noticed: a list notices it.
      check(await own.call('GET', '/agents'))
      await stream.take(5)
      await sleep(QUIET_MS)
      assert.deepEqual(stream.messages.map((m) => [m.type, m.event.data.changes.status ?? null]), [
        ['agent.created', null],
        ['agent.updated', { from: 'offline', to: 'online' }],
        ['agent.status_changed', { from: 'offline', to: 'online' }],
        ['agent.updated', { from: 'online', to: 'offline' }],
        ['agent.status_changed', { from: 'online', to: 'offline' }]
      ])
      assertIncreasingIds(stream.messages)
    })
  })

  it('a write held up by the database while its agent\'s presence lapses has its own events, and the lapse has its own once', async () => {
    await withLapsingStream(async (own, stream) => {
      const created = check(await own.call('POST', '/agents', { serviceUserId: 'ev-held-put', name: 'Before' })).body.data as Agent
      check(await own.call('POST', `/agents/${created.id}/heartbeat`))
      // The rename is taken while the agent is online, and written once its presence has lapsed.
      check(await whileDatabaseHeld(own, async () => await own.call('PUT', `/agents/${created.id}`, { name: 'After' })))
      check(await own.call('GET', '/agents'))
      await stream.take(6)
      await sleep(QUIET_MS)
      const statusChanges = stream.messages.filter((m) => m.type === 'agent.status_changed').map((m) => m.event.data.changes.status)
      assert.deepEqual(statusChanges, [{ from: 'offline', to: 'online' }, { from: 'online', to: 'offline' }], 'online once, offline once')
      assert.equal(stream.messages.length, 6, 'created, the heartbeat\'s two, the rename, the lapse\'s two')
      const last = stream.messages.at(-1)?.event.data.agent
      assert.equal(last?.name, 'After')
      assert.equal(last?.status, 'offline')
      assertIncreasingIds(stream.messages)
    })
  })

  it('shutting down with a stream open ends the stream and does not hang', async () => {
    const other = await startTestServer({ EVENTS_POLL_MS: '50' })
    let closed = false
    try {
      const stream = await openStream(other.api, other.token)
      assert.equal(stream.status, 200)
      await until('the stream to be counted', () => other.services.streams.size === 1 ? true : undefined, 3000)
      const closing = other.close().then(() => { closed = true })
      await Promise.race([closing, sleep(5000)])
      assert.ok(closed, 'close() finished within 5 s with a stream open')
      await until('the client to see the stream end', () => stream.ended ? true : undefined, 3000)
      assert.equal(other.services.streams.size, 0)
    } finally {
      if (!closed) await other.close().catch(() => { /* best effort */ })
    }
  })
})

describe(`event stream across two instances on one store (${storeLeg()})`, () => {
  const TOKEN = 'events-instances-token-0123456789'
  let instances: Instances
  let a: ServeProcess
  let b: ServeProcess
  const via = async (p: ServeProcess, method: string, path: string, body?: unknown) =>
    await call(`${p.url}/api/external/v1${path}`, {
      method,
      headers: { authorization: `Bearer ${TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) })
    })

  before(async () => {
    instances = await startTwoInstances(TOKEN, { EVENTS_POLL_MS: '50' })
    ;({ a, b } = instances)
  })

  after(async () => { await instances?.stop() })

  it('a client streaming from one instance sees the changes made through the other, and can resume on either', async () => {
    const stream = await openStream(`${a.url}/api/external/v1`, TOKEN)
    let seen: Message[]
    let agentId: string
    try {
      assert.equal(stream.status, 200)
      const created = await via(b, 'POST', '/agents', { serviceUserId: 'across-1', name: 'Across' })
      assert.equal(created.status, 200, created.text)
      agentId = created.body.data.id
      const updated = await via(b, 'PUT', `/agents/${agentId}`, { status: 'online' })
      assert.equal(updated.status, 200, updated.text)
      seen = await stream.take(3)
      assert.deepEqual(seen.map((m) => m.event.type), ['agent.created', 'agent.updated', 'agent.status_changed'])
      assert.deepEqual(seen[0]!.event.data.agent, created.body.data)
      assert.deepEqual(seen[2]!.event.data.agent, updated.body.data)
      assertIncreasingIds(seen)
    } finally {
      stream.close()
    }

    // The client reconnects to the other instance with its Last-Event-ID.
    const deleted = await via(a, 'DELETE', `/agents/${agentId}`)
    assert.equal(deleted.status, 200, deleted.text)
    const resumed = await openStream(`${b.url}/api/external/v1`, TOKEN, { 'last-event-id': seen[2]!.id! })
    try {
      await resumed.take(1)
      await sleep(QUIET_MS)
      assert.deepEqual(resumed.messages.map((m) => [m.event.type, m.event.data.agent]), [['agent.deleted', deleted.body.data]])
    } finally {
      resumed.close()
    }
  })
})

describe('event streams per widget (EVENTS_MAX_STREAMS)', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer({ EVENTS_MAX_STREAMS: '2', EVENTS_POLL_MS: '50' }) })
  after(async () => { await srv?.close() })

  it('a widget may open that many streams on an instance; the next is 429 until one closes; other widgets are not held back', async () => {
    const open: Stream[] = []
    try {
      open.push(await openStream(srv.api, srv.token), await openStream(srv.api, srv.token))
      assert.deepEqual(open.map((s) => s.status), [200, 200])
      const refused = await openStream(srv.api, srv.token)
      assert.equal(refused.status, 429)
      assert.equal((refused.body as ApiResponse['body']).error.code, 'rate_limited')
      assert.match((refused.body as ApiResponse['body']).error.message, /EVENTS_MAX_STREAMS/)

      const other = await srv.services.tokens.create('another-widget')
      const theirs = await openStream(srv.api, other.token)
      open.push(theirs)
      assert.equal(theirs.status, 200, 'another widget has places of its own')

      open.shift()?.close()
      await until('a place to be given back', async () => {
        const next = await openStream(srv.api, srv.token)
        if (next.status === 200) { open.push(next); return true }
        return undefined
      }, WAIT_MS, 50)
    } finally {
      for (const s of open) s.close()
    }
  })
})

describe('a stream catching up with a client that reads', () => {
  let srv: TestServer
  // Polls 2 s apart: a stream that moved a page per poll would take 20 s for 2,000 events.
  before(async () => { srv = await startTestServer({ EVENTS_POLL_MS: '2000', MAINTENANCE_INTERVAL_MS: '3600000' }) })
  after(async () => { await srv?.close() })

  it('reads on as fast as its client takes the events, not a page per poll', async () => {
    const token = await srv.services.tokens.create('stream-catch-up-fast')
    const created = check(await srv.call('POST', '/agents', { serviceUserId: 'catch-up', name: 'n'.repeat(255) }, { authorization: `Bearer ${token.token}` })).body.data as Agent
    const first = (await srv.services.database.db.selectFrom('events').select('seq').where('agent_id', '=', created.id).executeTakeFirstOrThrow()).seq
    // 2,000 events of ~1 KB after it: ten pages, each more than a connection's buffer takes at once.
    const copies = await copyNewestEvent(srv, created.id, 2000)
    const stream = await openStream(srv.api, token.token, { 'last-event-id': String(first) })
    try {
      const started = Date.now()
      await stream.take(copies.length, 5000)
      assert.ok(Date.now() - started < 5000)
      assert.deepEqual(stream.messages.map((m) => Number(m.id)), copies, 'every event once, in order')
    } finally {
      stream.close()
    }
  })
})

describe('event streams of one widget share one poller', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer({ EVENTS_POLL_MS: '50', MAINTENANCE_INTERVAL_MS: '3600000' }) })
  after(async () => { await srv?.close() })

  const streamReads = async () =>
    await metricValue(srv, 'agentry_event_stream_reads_total{by="shared"}') + await metricValue(srv, 'agentry_event_stream_reads_total{by="own"}')
  const streamsIn = async (state: 'live' | 'catching_up') => await metricValue(srv, `agentry_event_streams{state="${state}"}`)
  /** Lookups of the events table the database itself has counted (PostgreSQL: every test server has a database of its own). */
  const eventScans = async (): Promise<number> => {
    const client = new pg.Client({ connectionString: srv.sharedEnv.DATABASE_URL })
    await client.connect()
    try {
      const { rows } = await client.query<{ n: string }>("select coalesce(seq_scan, 0) + coalesce(idx_scan, 0) as n from pg_stat_user_tables where relname = 'events'")
      return Number(rows[0]?.n ?? 0)
    } finally {
      await client.end()
    }
  }

  it('ten open streams of a widget cost one read of its event log per poll, not ten, and each gets every event', async () => {
    const token = await srv.services.tokens.create('streams-one-poller')
    const w = async (method: string, path: string, body?: unknown) => await srv.call(method, path, body, { authorization: `Bearer ${token.token}` })
    const streams: Stream[] = []
    try {
      for (let i = 0; i < 10; i++) streams.push(await openStream(srv.api, token.token))
      assert.deepEqual(streams.map((s) => s.status), Array(10).fill(200))
      await until('the ten streams to be open', () => srv.services.streams.size === 10 ? true : undefined, WAIT_MS)
      // Past the streams' first reads (each reads once where it starts).
      await sleep(300)
      const postgres = srv.sharedEnv.DATABASE_URL !== undefined
      const [reads, scans] = [await streamReads(), postgres ? await eventScans() : 0]
      const WINDOW_MS = 3000
      const polls = WINDOW_MS / 50
      await sleep(WINDOW_MS)
      const read = await streamReads() - reads
      assert.ok(read >= polls / 3, `the widget's log is polled (${read} reads in ${polls} polls)`)
      assert.ok(read <= polls * 1.5, `one read per poll for all ten streams, not one each: ${read} reads in ${polls} polls`)
      if (postgres) {
        // The database's own count (pg_stat_user_tables, flushed by each connection at most a second
        // late): ten streams polling on their own would make 600 lookups in these 60 polls.
        const scanned = await eventScans() - scans
        assert.ok(scanned <= polls * 3, `the database counted ${scanned} lookups of events in ${polls} polls`)
      }
      assert.equal(await metricValue(srv, 'agentry_event_stream_pollers'), 1)
      assert.equal(await streamsIn('live'), 10)

      const created = check(await w('POST', '/agents', { serviceUserId: 'one-poller', name: 'Shared' })).body.data as Agent
      for (const s of streams) assert.deepEqual((await s.take(1)).map(summary), [{ type: 'agent.created', agent: created, changes: {} }])
    } finally {
      for (const s of streams) s.close()
    }
    await until('the poller to stop with the last stream', async () => await metricValue(srv, 'agentry_event_stream_pollers') === 0 ? true : undefined, WAIT_MS)
  })

  it('a made-up Last-Event-ID past the widget\'s newest event does not keep the widget\'s other streams out of the shared flow', async () => {
    const token = await srv.services.tokens.create('streams-made-up-id')
    const w = async (method: string, path: string, body?: unknown) => await srv.call(method, path, body, { authorization: `Bearer ${token.token}` })
    check(await w('POST', '/agents', { serviceUserId: 'made-up-id', name: 'Before' }))
    const streams: Stream[] = []
    try {
      // The first stream of the widget on this instance, from an id no event has.
      streams.push(await openStream(srv.api, token.token, { 'last-event-id': '999999999999999' }))
      await until('it to be live', async () => await streamsIn('live') === 1 ? true : undefined, WAIT_MS)
      streams.push(await openStream(srv.api, token.token), await openStream(srv.api, token.token))
      await until('all three to share the poller', async () => await streamsIn('live') === 3 ? true : undefined, WAIT_MS)
      const created = check(await w('POST', '/agents', { serviceUserId: 'made-up-id-2', name: 'After' })).body.data as Agent
      for (const s of streams) assert.deepEqual((await s.take(1)).map(summary), [{ type: 'agent.created', agent: created, changes: {} }])
      assert.equal(await streamsIn('catching_up'), 0)
    } finally {
      for (const s of streams) s.close()
    }
  })

  it('streams resuming from old Last-Event-IDs while others are live get everything once, in order, and join the live flow', async () => {
    const token = await srv.services.tokens.create('streams-resume-among-live')
    const w = async (method: string, path: string, body?: unknown) => await srv.call(method, path, body, { authorization: `Bearer ${token.token}` })
    const created = check(await w('POST', '/agents', { serviceUserId: 'resume-live', name: 'n'.repeat(255) })).body.data as Agent
    const db = srv.services.database.db
    const first = await db.selectFrom('events').select(['seq', 'widget_id']).where('agent_id', '=', created.id).executeTakeFirstOrThrow()
    // Five pages of history to catch up on.
    const history = await copyNewestEvent(srv, created.id, 1000)
    const live = [await openStream(srv.api, token.token), await openStream(srv.api, token.token), await openStream(srv.api, token.token)]
    const resumed: Stream[] = []
    try {
      await until('the live streams to join', async () => await streamsIn('live') === 3 ? true : undefined, WAIT_MS)
      // Events keep coming, one every few milliseconds, while streams resuming from three places in
      // the history open, catch up and join the live ones, and for a while after.
      let writing = true
      let renames = 0
      const writer = (async () => {
        while (writing) check(await w('PUT', `/agents/${created.id}`, { name: `Renamed ${renames++}` }))
      })()
      try {
        for (const from of [first.seq, history[499]!, history[998]!]) {
          await sleep(20)
          resumed.push(await openStream(srv.api, token.token, { 'last-event-id': String(from) }))
        }
        await until('the resumed streams to catch up and join the others', async () => await streamsIn('live') === 6 ? true : undefined, WAIT_MS)
        const joined = renames
        await until('more events after they joined', () => renames >= joined + 10 ? true : undefined, WAIT_MS)
      } finally {
        writing = false
        await writer
      }
      const all = (await db.selectFrom('events').select('seq').where('widget_id', '=', first.widget_id).orderBy('seq').execute()).map((r) => r.seq)
      const later = all.filter((seq) => seq > history.at(-1)!)
      assert.equal(later.length, renames)
      const expected = [first.seq, history[499]!, history[998]!].map((from) => all.filter((seq) => seq > from))
      for (const [i, s] of resumed.entries()) await s.take(expected[i]!.length, 10_000)
      for (const s of live) await s.take(later.length)
      await sleep(QUIET_MS)
      for (const [i, s] of resumed.entries()) {
        assert.deepEqual(s.messages.map((m) => Number(m.id)), expected[i], 'the history and the live flow, each event once, in id order')
      }
      assert.deepEqual(resumed[0]!.messages.slice(1000).map((m) => m.event.data.agent.name), Array.from({ length: renames }, (_, i) => `Renamed ${i}`))
      for (const s of live) assert.deepEqual(s.messages.map((m) => Number(m.id)), later)

      check(await w('DELETE', `/agents/${created.id}`))
      for (const [i, s] of resumed.entries()) assert.equal((await s.take(expected[i]!.length + 1)).at(-1)?.type, 'agent.deleted')
      for (const s of live) assert.equal((await s.take(later.length + 1)).at(-1)?.type, 'agent.deleted')
      await sleep(QUIET_MS)
      for (const [i, s] of resumed.entries()) assert.equal(s.messages.length, expected[i]!.length + 1)
      for (const s of live) assert.equal(s.messages.length, later.length + 1)
    } finally {
      for (const s of [...live, ...resumed]) s.close()
    }
  })

  it('a client that stops reading does not hold back its widget\'s other streams, and misses nothing once it reads again', async () => {
    const token = await srv.services.tokens.create('streams-unread-among-live')
    const w = async (method: string, path: string, body?: unknown) => await srv.call(method, path, body, { authorization: `Bearer ${token.token}` })
    const created = check(await w('POST', '/agents', { serviceUserId: 'unread-live', name: 'n'.repeat(255) })).body.data as Agent
    const live = [await openStream(srv.api, token.token), await openStream(srv.api, token.token)]
    const unread = await openUnreadStream(srv.api, token.token)
    try {
      assert.equal(unread.stream.status, 200)
      await until('the three streams to join', async () => await streamsIn('live') === 3 ? true : undefined, WAIT_MS)
      // 20,000 events of ~1 KB: far more than the unread stream's connection holds (a few MB).
      const copies = await copyNewestEvent(srv, created.id, 20_000)
      for (const s of live) await s.take(copies.length, 20_000)
      for (const s of live) assert.deepEqual(s.messages.map((m) => Number(m.id)), copies)
      // Its connection full, the unread stream left the shared flow (nothing more is held for it); the
      // others are in it (or back in it within a poll, if they fell behind for a moment).
      await until('the reading streams to be live, the unread one out', async () =>
        await streamsIn('live') === 2 && await streamsIn('catching_up') === 1 ? true : undefined, WAIT_MS)

      // New events still reach the others at once.
      const renamed = check(await w('PUT', `/agents/${created.id}`, { name: 'Still live' })).body.data as Agent
      for (const s of live) assert.deepEqual(summary((await s.take(copies.length + 1, 2000)).at(-1)!).agent, renamed)

      // It reads again: everything, once, in order, and back in the shared flow.
      unread.read()
      const all = await unread.stream.take(copies.length + 1, 20_000)
      assert.deepEqual(all.slice(0, -1).map((m) => Number(m.id)), copies)
      assert.deepEqual(summary(all.at(-1)!).agent, renamed)
      await until('the stream that read again to rejoin', async () => await streamsIn('live') === 3 ? true : undefined, WAIT_MS)
      check(await w('DELETE', `/agents/${created.id}`))
      for (const s of [...live, unread.stream]) assert.equal((await s.take(copies.length + 2)).at(-1)?.type, 'agent.deleted')
      await sleep(QUIET_MS)
      for (const s of [...live, unread.stream]) assert.equal(s.messages.length, copies.length + 2)
    } finally {
      for (const s of live) s.close()
      unread.socket.destroy()
    }
  })
})
