import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { serversForSuite, startTestServer, type TestServer } from './helpers/server.js'
import type { FixtureServer } from './helpers/fixtures.js'

describe('/metrics (Prometheus text format)', () => {
  let srv: TestServer
  let fx: FixtureServer
  serversForSuite((s, f) => { srv = s; fx = f })

  async function scrape (): Promise<string> {
    const res = await fetch(`${srv.url}/metrics`)
    assert.equal(res.status, 200)
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain/)
    return await res.text()
  }

  it('counts and times requests by route template and status', async () => {
    await srv.call('GET', '/agents')
    await srv.call('GET', '/agents/00000000-0000-4000-8000-000000000000')
    const text = await scrape()
    assert.match(text, /agentry_http_requests_total\{method="GET",route="\/api\/external\/v1\/agents",status_code="200"\} \d+/)
    assert.match(text, /agentry_http_requests_total\{method="GET",route="\/api\/external\/v1\/agents\/:id",status_code="404"\} 1/)
    assert.match(text, /agentry_http_request_duration_seconds_bucket\{le="0\.1",method="GET",route="\/api\/external\/v1\/agents",status_code="200"\} \d+/)
  })

  it('times avatar pipeline stages and counts failures by reason', async () => {
    await srv.call('POST', '/agents', { serviceUserId: 'm1', name: 'M', avatar: `${fx.url}/photo.jpg` })
    await srv.call('POST', '/agents', { serviceUserId: 'm2', name: 'M', avatar: `${fx.url}/image.svg` })
    await srv.call('POST', '/agents', { serviceUserId: 'm3', name: 'M', avatar: `${fx.url}/missing` })
    const text = await scrape()
    for (const stage of ['download', 'process', 'store']) {
      assert.match(text, new RegExp(`agentry_avatar_stage_duration_seconds_count\\{stage="${stage}"\\} [1-9]`))
    }
    assert.match(text, /agentry_avatar_failures_total\{reason="avatar_unsupported_format"\} 1/)
    assert.match(text, /agentry_avatar_failures_total\{reason="avatar_http_error"\} 1/)
  })

  it('reports process metrics, and pool use on PostgreSQL', async () => {
    const text = await scrape()
    assert.match(text, /agentry_process_resident_memory_bytes \d+/)
    if (srv.services.database.dialect === 'postgres') assert.match(text, /agentry_db_pool_connections\{state="total"\} \d+/)
  })
})

describe('/metrics with METRICS_TOKEN', () => {
  let srv: TestServer
  before(async () => { srv = await startTestServer({ METRICS_TOKEN: 'metrics-secret-123' }) })
  after(async () => { await srv.close() })

  it('asks for the metrics token, not a widget token', async () => {
    assert.equal((await fetch(`${srv.url}/metrics`)).status, 401)
    assert.equal((await fetch(`${srv.url}/metrics`, { headers: { authorization: `Bearer ${srv.token}` } })).status, 401)
    assert.equal((await fetch(`${srv.url}/metrics`, { headers: { authorization: 'Bearer metrics-secret-123' } })).status, 200)
  })
})

describe('AVATAR_LEFTOVERS_SWEEP_SECONDS longer than Node\'s timers take (~24.8 days)', () => {
  it('looks once per period, not over and over (a timer past 2^31-1 ms runs after 1 ms)', async () => {
    const warnings: string[] = []
    const onWarning = (w: Error): void => { warnings.push(w.name) }
    process.on('warning', onWarning)
    const srv = await startTestServer({ AVATAR_LEFTOVERS_SWEEP_SECONDS: '2592000' })
    try {
      await new Promise((resolve) => setTimeout(resolve, 500))
      const text = await (await fetch(`${srv.url}/metrics`)).text()
      const sweeps = /^agentry_avatar_leftover_sweeps_total (\d+)/m.exec(text)
      assert.equal(sweeps?.[1], '0', 'no look in the first half second (the first comes after 10 minutes)')
      assert.ok(!warnings.includes('TimeoutOverflowWarning'), warnings.join(', '))
    } finally {
      process.off('warning', onWarning)
      await srv.close()
    }
  })
})
