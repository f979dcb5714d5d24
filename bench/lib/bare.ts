import fs from 'node:fs'
import path from 'node:path'

/**
 * The ceiling of Node on this machine: a bare node:http server answering, from memory, the exact
 * bytes (body, content type, ETag) the service answers for the same paths. No framework, no
 * validation, no database. Written out as a plain .mjs file and run with plain `node`, so nothing
 * (no TypeScript loader) stands between it and the runtime.
 */
const SOURCE = `// Written by bench/lib/bare.ts. Usage: node bare-server.mjs <routes.json> <port>
import http from 'node:http'
import { readFileSync } from 'node:fs'

const [file, port] = process.argv.slice(2)
const routes = new Map()
for (const [path, { body, etag }] of Object.entries(JSON.parse(readFileSync(file, 'utf8')))) {
  const bytes = Buffer.from(body)
  const headers = { 'content-type': 'application/json; charset=utf-8', 'content-length': bytes.length }
  if (etag) headers.etag = etag
  routes.set(path, { bytes, headers })
}
routes.set('/healthz', { bytes: Buffer.from('{"status":200,"data":{"ok":true}}'), headers: { 'content-type': 'application/json; charset=utf-8' } })
const notFound = Buffer.from('{"status":404}')

const server = http.createServer((req, res) => {
  const route = routes.get(req.url)
  if (route === undefined) {
    res.writeHead(404, { 'content-type': 'application/json; charset=utf-8', 'content-length': notFound.length })
    res.end(notFound)
    return
  }
  res.writeHead(200, route.headers)
  res.end(route.bytes)
})
server.keepAliveTimeout = 72_000
server.listen(Number(port), '127.0.0.1')
process.on('SIGTERM', () => { server.close(() => process.exit(0)); server.closeAllConnections() })
`

export interface BareRoute {
  body: string
  etag?: string
}

/** Writes the server and its routes into dir; returns the node arguments that start it. */
export function writeBareServer (dir: string, routes: Record<string, BareRoute>, port: number): string[] {
  const script = path.join(dir, 'bare-server.mjs')
  const file = path.join(dir, 'routes.json')
  fs.writeFileSync(script, SOURCE)
  fs.writeFileSync(file, JSON.stringify(routes))
  return [script, file, String(port)]
}

/**
 * The same bytes through a bare Fastify (the service's framework, from this repository's
 * node_modules): no schema, hooks, database or logging. Between the bare node:http ceiling and
 * the service, it shows what the framework alone costs here.
 */
const FASTIFY_SOURCE = `// Written by bench/lib/bare.ts. Usage: node fastify-server.mjs <routes.json> <port> <repo>/package.json
import { createRequire } from 'node:module'
import { readFileSync } from 'node:fs'

const [file, port, pkg] = process.argv.slice(2)
const Fastify = createRequire(pkg)('fastify')
const routes = new Map()
for (const [path, { body, etag }] of Object.entries(JSON.parse(readFileSync(file, 'utf8')))) {
  const headers = { 'content-type': 'application/json; charset=utf-8' }
  if (etag) headers.etag = etag
  routes.set(path, { bytes: Buffer.from(body), headers })
}
const app = Fastify({ logger: false })
const answer = (request, reply) => {
  const route = routes.get(request.url)
  if (route === undefined) return reply.code(404).send({ status: 404 })
  return reply.headers(route.headers).send(route.bytes)
}
app.get('/healthz', async () => ({ status: 200, data: { ok: true } }))
app.get('/api/external/v1/agents', answer)
app.get('/api/external/v1/agents/:id', answer)
await app.listen({ port: Number(port), host: '127.0.0.1' })
process.on('SIGTERM', () => { app.close().then(() => process.exit(0)) })
`

/** Writes the bare Fastify server; returns the node arguments that start it. */
export function writeFastifyServer (dir: string, routes: Record<string, BareRoute>, port: number, repoRoot: string): string[] {
  const script = path.join(dir, 'fastify-server.mjs')
  const file = path.join(dir, 'routes.json')
  fs.writeFileSync(script, FASTIFY_SOURCE)
  fs.writeFileSync(file, JSON.stringify(routes))
  return [script, file, String(port), path.join(repoRoot, 'package.json')]
}
