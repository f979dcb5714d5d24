import type { Config } from '../config/index.js'
import type { BlobStore } from './blob-store.js'
import { LocalBlobStore } from './local.js'
import { S3BlobStore } from './s3.js'

export type { BlobStore } from './blob-store.js'

/** Picks the avatar file store from config: local disk (the embedded default) or an S3 bucket. */
export function createBlobStore (config: Config): BlobStore {
  const target = config.storage
  return target.kind === 's3' ? new S3BlobStore(target) : new LocalBlobStore(target.dir)
}
