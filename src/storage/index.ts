import type { Config } from '../config/index.js'
import type { BlobStore } from './blob-store.js'
import { LocalBlobStore } from './local.js'

export type { BlobStore } from './blob-store.js'

/** Picks the avatar file store from config. Local disk is the embedded default. */
export function createBlobStore (config: Config): BlobStore {
  return new LocalBlobStore(config.storageDir)
}
