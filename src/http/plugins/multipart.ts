import type { FastifyInstance } from 'fastify'
import multipart from '@fastify/multipart'
import { coerceFormBooleans } from './body-parsers.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** The `avatar` file of a multipart/form-data request, if one was sent. */
    avatarUpload: Buffer | undefined
  }
}

/**
 * multipart/form-data on create and update: the same fields as a form, and `avatar` may be a file.
 * The file is taken out of the body before validation and goes through the same avatar pipeline.
 */
export async function registerMultipart (app: FastifyInstance, maxFileBytes: number): Promise<void> {
  await app.register(multipart, {
    attachFieldsToBody: 'keyValues',
    limits: { fileSize: maxFileBytes, files: 1, fields: 10, fieldSize: 4096, parts: 11, headerPairs: 100 }
  })
  app.decorateRequest('avatarUpload', undefined)
  app.addHook('preValidation', async (request) => {
    if (!request.isMultipart()) return
    const body = (request.body ?? {}) as Record<string, unknown>
    if (Buffer.isBuffer(body.avatar)) {
      request.avatarUpload = body.avatar
      delete body.avatar
    }
    request.body = coerceFormBooleans(body)
  })
}
