import { createHash } from 'node:crypto'
import { readFile, stat } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { Config } from '../../config/index.js'

/**
 * The admin console at /admin: a static page and its browser modules. The console is a client of
 * the public API like any other (it calls /api/external/v1 with the token the person signs in
 * with, through the typed client served here as /admin/client.js), so this plugin only serves
 * files: no token is needed to load them and they are outside the API's rate limit.
 *
 * Sources live in admin/ (index.html, styles.css, src/*.ts compiled to dist/admin/ by `npm run build`).
 */

// src/http/plugins (tsx) and dist/http/plugins (built) are both three levels below the package root.
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..')
const ADMIN_DIR = path.join(ROOT, 'admin')
const BUILD_DIR = path.join(ROOT, 'dist', 'admin')
const CLIENT_FILE = path.join(ROOT, 'dist', 'client', 'index.js')

const MODULE_NAME = /^[a-z][a-z0-9-]{0,63}\.js(\.map)?$/

interface Asset { file: string, type: string }

/** Which file a name under /admin/ is, if any; nothing outside this list is ever read. */
function asset (name: string): Asset | undefined {
  if (name === '' || name === 'index.html') return { file: path.join(ADMIN_DIR, 'index.html'), type: 'text/html; charset=utf-8' }
  if (name === 'styles.css') return { file: path.join(ADMIN_DIR, 'styles.css'), type: 'text/css; charset=utf-8' }
  if (name === 'favicon.svg') return { file: path.join(ADMIN_DIR, 'favicon.svg'), type: 'image/svg+xml' }
  if (name === 'client.js') return { file: CLIENT_FILE, type: 'text/javascript; charset=utf-8' }
  if (MODULE_NAME.test(name)) {
    return { file: path.join(BUILD_DIR, name), type: name.endsWith('.map') ? 'application/json; charset=utf-8' : 'text/javascript; charset=utf-8' }
  }
  return undefined
}

interface Loaded { mtimeMs: number, size: number, body: Buffer, etag: string }

/** The policy of every console response: only its own scripts and styles, the API, and avatar images. */
export function adminContentSecurityPolicy (staticBaseUrl: string): string {
  const avatarOrigin = new URL(staticBaseUrl).origin
  return [
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    `img-src 'self' blob: ${avatarOrigin}`,
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "require-trusted-types-for 'script'",
    "trusted-types 'none'"
  ].join('; ')
}

export async function registerAdminConsole (app: FastifyInstance, config: Pick<Config, 'staticBaseUrl'>): Promise<void> {
  const csp = adminContentSecurityPolicy(config.staticBaseUrl)
  // Files are small; kept in memory and re-read when they change on disk (a rebuild while running).
  const cache = new Map<string, Loaded>()

  const load = async (file: string): Promise<Loaded | undefined> => {
    let info
    try { info = await stat(file) } catch { return undefined }
    if (!info.isFile()) return undefined
    const cached = cache.get(file)
    if (cached !== undefined && cached.mtimeMs === info.mtimeMs && cached.size === info.size) return cached
    const body = await readFile(file)
    const loaded = { mtimeMs: info.mtimeMs, size: info.size, body, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"` }
    cache.set(file, loaded)
    return loaded
  }

  const headers = (reply: FastifyReply) => {
    void reply.header('content-security-policy', csp)
    void reply.header('x-content-type-options', 'nosniff')
    void reply.header('referrer-policy', 'no-referrer')
    void reply.header('x-frame-options', 'DENY')
    void reply.header('cross-origin-opener-policy', 'same-origin')
    void reply.header('cross-origin-resource-policy', 'same-origin')
    void reply.header('permissions-policy', 'camera=(), microphone=(), geolocation=()')
  }

  const serve = async (request: FastifyRequest, reply: FastifyReply, name: string) => {
    const found = asset(name)
    const loaded = found === undefined ? undefined : await load(found.file)
    headers(reply)
    if (found === undefined || loaded === undefined) {
      const notBuilt = found !== undefined && found.file.startsWith(path.join(ROOT, 'dist')) && await load(path.join(BUILD_DIR, 'main.js')) === undefined
      void reply.header('cache-control', 'no-store')
      return reply.code(404).type('text/plain; charset=utf-8')
        .send(`Not found: /admin/${name}${notBuilt ? ' (the console is not built: run `npm run build`; npm start does it)' : ''}`)
    }
    // Names are not content-hashed, so browsers revalidate every time; unchanged files answer 304.
    void reply.header('cache-control', 'no-cache')
    void reply.header('etag', loaded.etag)
    if (request.headers['if-none-match']?.split(/\s*,\s*/).includes(loaded.etag) === true) return reply.code(304).send()
    return reply.type(found.type).send(loaded.body)
  }

  app.get('/admin', { schema: { hide: true } }, async (request, reply) => {
    // The page is useless without its compiled modules: say so rather than show a dead form.
    if (await load(path.join(BUILD_DIR, 'main.js')) === undefined) {
      headers(reply)
      void reply.header('cache-control', 'no-store')
      return reply.code(503).type('text/plain; charset=utf-8')
        .send('The admin console is not built yet: run `npm run build` (npm start does it for you).')
    }
    return await serve(request, reply, '')
  })
  app.get('/admin/:name', { schema: { hide: true } }, async (request, reply) =>
    await serve(request, reply, (request.params as { name: string }).name))
}
