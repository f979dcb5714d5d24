import { createHash } from 'node:crypto'
import type { Config } from '../config/index.js'
import type { AvatarRow } from '../db/types.js'
import type { Avatar } from '../http/schemas/agent.js'
import { avatarKeys, contentPath, type BlobFile, type BlobStore } from '../storage/blob-store.js'
import { fetchAvatar } from './fetch.js'
import { addressPolicy, type AddressPolicy } from '../net/guard.js'
import type { HostResolver } from '../net/resolve.js'
import { KeptConnections } from '../net/request.js'
import type { ProcessingBudget } from './budget.js'
import { MIME_TYPES, processAvatar, type ImageFormat } from './process.js'
import { errors, isAppError } from '../errors/index.js'
import type { AvatarObserver } from '../metrics/index.js'

/** An avatar image whose files are all in the store, ready for a database row to point at. */
export interface StoredImage {
  sha256: string
  ext: ImageFormat
  mimeType: string
  size: number
  width: number
  height: number
  /** Where it was downloaded from; null for an upload. */
  sourceUrl: string | null
  /** The files as stored, to put back should the file collector delete them meanwhile (see putBack). */
  files: readonly BlobFile[]
}

export interface AvatarServiceOptions {
  store: BlobStore
  staticBaseUrl: string
  limits: Config['avatar']
  /** Overrides the address policy derived from limits.allowPrivateNetworks (tests of the guard itself). */
  isAllowedAddress?: AddressPolicy
  /** How avatar hosts' names are resolved (default: the system's name servers). */
  resolver?: HostResolver
  observer?: AvatarObserver
  /** Room for decoded pixels, shared by every image this instance processes (AVATAR_PROCESSING_PIXELS). */
  budget: ProcessingBudget
}

const noObserver: AvatarObserver = { stage: () => {}, failed: () => {} }

const secondsSince = (start: bigint): number => Number(process.hrtime.bigint() - start) / 1e9

/** Runs fn and reports its time as stage's, less what `excluded` says was another stage's. */
async function timed<T> (observer: AvatarObserver, stage: Parameters<AvatarObserver['stage']>[0], fn: () => Promise<T>, excluded = () => 0): Promise<T> {
  const start = process.hrtime.bigint()
  try {
    return await fn()
  } finally {
    observer.stage(stage, secondsSince(start) - excluded())
  }
}

/** The avatar pipeline: guarded download, decode, orient, strip, variants, content-addressed files. */
export class AvatarService {
  private readonly isAllowedAddress: AddressPolicy
  private readonly observer: AvatarObserver
  /** Downloads from the same image host reuse their connections (all made under this policy). */
  private readonly connections = new KeptConnections()

  constructor (private readonly options: AvatarServiceOptions) {
    this.isAllowedAddress = options.isAllowedAddress ?? addressPolicy(options.limits.allowPrivateNetworks)
    this.observer = options.observer ?? noObserver
  }

  /** Downloads and stores the image at url. Every file is complete in the store when this resolves. */
  async ingestUrl (url: string): Promise<StoredImage> {
    return await this.ingest(url, async () => {
      const download = await timed(this.observer, 'download', () => fetchAvatar(url, { ...this.options.limits, isAllowedAddress: this.isAllowedAddress, resolver: this.options.resolver, connections: this.connections }))
      return download.bytes
    })
  }

  /** Stores an uploaded image, through the same checks as a downloaded one. */
  async ingestUpload (bytes: Buffer): Promise<StoredImage> {
    return await this.ingest(null, async () => {
      if (bytes.length > this.options.limits.maxBytes) {
        throw errors.avatar('avatar_too_large', `The avatar is larger than ${this.options.limits.maxBytes} bytes; use a smaller image.`)
      }
      return bytes
    })
  }

  private async ingest (sourceUrl: string | null, obtain: () => Promise<Buffer>): Promise<StoredImage> {
    const { limits, store } = this.options
    const observer = this.observer
    try {
      const bytes = await obtain()
      // The wait for room among the images in progress is its own stage, out of 'process'.
      let waited = 0
      const image = await timed(observer, 'process', () => processAvatar(bytes, limits, async (pixels) => {
        const start = process.hrtime.bigint()
        try {
          return await this.options.budget.admit(pixels)
        } finally {
          waited = secondsSince(start)
          observer.stage('wait', waited)
        }
      }), () => waited)
      const sha256 = createHash('sha256').update(image.original).digest('hex')
      const keys = avatarKeys(contentPath(sha256, image.format))
      const mimeType = MIME_TYPES[image.format]
      const files = [
        { key: keys['120x120'], data: image.variants['120x120'], contentType: mimeType },
        { key: keys['520x400'], data: image.variants['520x400'], contentType: mimeType },
        { key: keys.original, data: image.original, contentType: mimeType }
      ]
      // Every file is on disk (or in the bucket) before the caller writes a row that refers to it.
      await timed(observer, 'store', () => store.putAll(files))
      return { sha256, ext: image.format, mimeType, size: image.original.length, width: image.width, height: image.height, sourceUrl, files }
    } catch (err) {
      observer.failed(isAppError(err) ? err.code : 'internal_error')
      throw err
    }
  }

  /** Closes the kept download connections. */
  close (): void {
    this.connections.close()
  }

  /**
   * Stores an ingested image's files again: after a row referring to it was committed, when the
   * file collector had claimed the same content meanwhile (AgentService.maintain). Files still
   * there are left as they are.
   */
  async putBack (image: StoredImage): Promise<void> {
    await this.options.store.putAll(image.files)
  }

  /**
   * Removes an avatar's files from the store (the caller has made sure nothing refers to them);
   * signal: stop waiting for the store when it aborts.
   */
  async deleteFiles (sha256: string, ext: string, signal?: AbortSignal): Promise<void> {
    const keys = avatarKeys(contentPath(sha256, ext))
    // No record refers to this content any more (the caller checked), so the order does not matter.
    await Promise.all([keys.original, keys['120x120'], keys['520x400']].map(async (key) => { await this.options.store.delete(key, signal) }))
  }

  /** The seed's avatar object for a stored row. */
  toApi (row: AvatarRow): Avatar {
    const path = contentPath(row.sha256, row.ext)
    const base = this.options.staticBaseUrl
    return {
      id: row.id,
      type: 'image',
      meta: { width: row.width, height: row.height },
      info: { ext: row.ext as ImageFormat, name: row.name, path, size: row.size, mimeType: row.mime_type },
      url: { '120x120': `${base}/120x120${path}`, '520x400': `${base}/520x400${path}`, default: `${base}${path}` },
      createdAt: row.created_at,
      updatedAt: row.updated_at
    }
  }
}
