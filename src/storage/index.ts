import type { Config } from '../config/index.js'
import type { BlobStore } from './blob-store.js'
import { LocalBlobStore } from './local.js'

export type { BlobStore } from './blob-store.js'

/**
 * Picks the avatar file store from config: local disk (the embedded default) or an S3 bucket.
 * The AWS SDK is loaded only for a bucket.
 */
export async function createBlobStore (config: Config): Promise<BlobStore> {
  const target = config.storage
  if (target.kind !== 's3') return new LocalBlobStore(target.dir)
  const { S3BlobStore } = await import('./s3.js')
  return new S3BlobStore(target)
}
