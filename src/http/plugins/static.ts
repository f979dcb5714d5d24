import fs from 'node:fs'
import type { FastifyInstance } from 'fastify'
import fastifyStatic from '@fastify/static'
import { AVATAR_KEY_PATTERN } from '../../storage/blob-store.js'

/**
 * Serves locally stored avatar files at /static/... Files are content-addressed, so they never change:
 * cached for a year as immutable, with ETags. Only paths shaped like an avatar key are ever served.
 */
export async function registerStaticFiles (app: FastifyInstance, root: string): Promise<void> {
  fs.mkdirSync(root, { recursive: true })
  await app.register(fastifyStatic, {
    root,
    prefix: '/static/',
    decorateReply: false,
    index: false,
    list: false,
    dotfiles: 'deny',
    etag: true,
    lastModified: true,
    immutable: true,
    maxAge: '365d',
    allowedPath: (pathName) => AVATAR_KEY_PATTERN.test(pathName.replace(/^\//, '')),
    setHeaders: (reply) => {
      void reply.header('x-content-type-options', 'nosniff')
      void reply.header('content-security-policy', "default-src 'none'")
    }
  })
}
