import fs from 'node:fs'
import path from 'node:path'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fastifyStatic from '@fastify/static'
import { IMMUTABLE, parseAvatarKey, type BlobStore } from '../../storage/blob-store.js'
import { LocalBlobStore } from '../../storage/local.js'

function securityHeaders (reply: FastifyReply): void {
  void reply.header('x-content-type-options', 'nosniff')
  void reply.header('content-security-policy', "default-src 'none'")
}

/**
 * The avatar key a request names, if it names one exactly as the API gave it out: an avatar's file
 * name whose folders are its hash's, spelled without percent-encoding and without a trailing slash
 * (which the router would take: each file has one URL, and so one entry in a CDN's cache).
 */
function requestedKey (request: FastifyRequest): string | undefined {
  const key = (request.params as { '*': string })['*']
  const raw = request.url
  const query = raw.indexOf('?')
  if ((query < 0 ? raw : raw.slice(0, query)) !== `/static/${key}`) return undefined
  return parseAvatarKey(key) === undefined ? undefined : key
}

/**
 * Serves avatar files at /static/... Files are content-addressed, so they never change: cached for a
 * year as immutable, with ETags. Only paths shaped like an avatar key are ever served.
 * Local disk is served by @fastify/static's sendFile (sendfile, ranges, ETags); a bucket is streamed through, so the
 * default STATIC_BASE_URL keeps working with a private bucket. At scale, point STATIC_BASE_URL at a
 * CDN in front of the bucket and this route sees no traffic.
 */
export async function registerStaticFiles (app: FastifyInstance, store: BlobStore): Promise<void> {
  if (store instanceof LocalBlobStore) {
    fs.mkdirSync(store.root, { recursive: true })
    // Only the reply decorator: a key is not where its file lies on disk (LocalBlobStore.fileOf).
    await app.register(fastifyStatic, {
      root: store.root,
      serve: false,
      index: false,
      list: false,
      dotfiles: 'deny',
      etag: true,
      lastModified: true,
      immutable: true,
      maxAge: '365d',
      setHeaders: securityHeaders
    })
    app.get('/static/*', { schema: { hide: true } }, async (request, reply) => {
      const key = requestedKey(request)
      const file = key === undefined ? undefined : store.pathOf(key)
      if (file === undefined) return reply.callNotFound()
      return await reply.sendFile(path.relative(store.root, file))
    })
    return
  }
  const read = store.read?.bind(store)
  if (read === undefined) return
  // GET and HEAD (a HEAD asks the bucket for the headers alone), with ranges and conditions.
  app.route({
    method: ['GET', 'HEAD'],
    url: '/static/*',
    schema: { hide: true },
    handler: async (request, reply) => {
      const key = requestedKey(request)
      const h = request.headers
      const file = key === undefined
        ? undefined
        : await read(key, {
          ifNoneMatch: h['if-none-match'],
          ifMatch: h['if-match'],
          ifModifiedSince: h['if-modified-since'],
          ifUnmodifiedSince: h['if-unmodified-since'],
          range: h.range,
          headOnly: request.method === 'HEAD'
        })
      if (file === undefined) return reply.callNotFound()
      if (file.status === 412 || file.status === 416) {
        // Failed as @fastify/send fails on local disk, so that the error handler answers both stores alike.
        const contentRange = file.status === 416 && file.size !== undefined ? { 'Content-Range': `bytes */${file.size}` } : {}
        throw Object.assign(new Error(`static file: ${file.status}`), { statusCode: file.status, headers: contentRange })
      }
      securityHeaders(reply)
      void reply.header('cache-control', IMMUTABLE)
      if (file.etag !== undefined) void reply.header('etag', file.etag)
      if (file.lastModified !== undefined) void reply.header('last-modified', file.lastModified.toUTCString())
      if (file.status === 304) return await reply.code(304).send()
      void reply.header('accept-ranges', 'bytes')
      void reply.header('content-type', file.contentType)
      if (file.contentLength !== undefined) void reply.header('content-length', file.contentLength)
      if (file.contentRange !== undefined) void reply.header('content-range', file.contentRange)
      void reply.code(file.status)
      return await reply.send(request.method === 'HEAD' ? undefined : file.body)
    }
  })
}
