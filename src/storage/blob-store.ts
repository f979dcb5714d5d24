/**
 * Where avatar files live. Keys are relative, slash-separated paths such as
 * `120x120/96/b8/5c/<sha256>.jpeg`; the same key is the path under STATIC_BASE_URL.
 */
export interface BlobStore {
  readonly kind: string
  /** Where the files are, for people: a folder's path, or `s3://bucket/prefix`. */
  readonly location: string
  /**
   * Stores each file under its key, completely and durably, before resolving: a reader never sees a
   * partial file, and the database refers to the files only once this has resolved. Content is
   * addressed by its hash, so a key that already holds the content is left as it is (a file a crash
   * left alone beside missing siblings is completed by the next ingest of that content; on local
   * disk, where a crash can leave a file that is not whole, the bytes are compared).
   */
  putAll: (files: readonly BlobFile[]) => Promise<void>
  /** signal: stop waiting for the store when it aborts (honoured by S3; a local delete is quick). */
  delete: (key: string, signal?: AbortSignal) => Promise<void>
  /**
   * Every file in the store (files in progress excluded), in no particular order, with when it was
   * last written. Read as it goes, never all at once (`agentry files check` walks a whole bucket).
   * With `under` (a folder, `ab/` or `120x120/ab/`), only what lies beneath it: in a bucket the keys
   * that begin with it, on local disk the files in that folder of its layout on disk. Either way
   * `xy/`, `120x120/xy/` and `520x400/xy/` together hold every file of the images whose hash
   * begins with `xy`.
   */
  list: (under?: string) => AsyncIterable<ListedFile>
  /** Throws when the store cannot take writes; used by /readyz. */
  checkReady: () => Promise<void>
  /**
   * The whole of a stored file; undefined when there is none. For `agentry files sweep`, which
   * makes an image's missing variants again from its original (avatar files are a few MB at most).
   */
  get: (key: string) => Promise<Buffer | undefined>
  /** Whether a file is stored under key now, without reading it (a HEAD on S3). */
  has: (key: string) => Promise<boolean>
  /**
   * A stored file as a GET (or, with headOnly, a HEAD) of it with these request headers answers;
   * undefined when there is none. Stores served by the service's own static file handler (local
   * disk) need not have it.
   */
  read?: (key: string, request?: ReadRequest) => Promise<StoredFile | undefined>
  /**
   * Deletes what writes that never finished left behind, if the store can hold such things (local
   * disk: temporary files older than olderThanMs); returns how many. A bucket has none: an object
   * appears whole or not at all.
   */
  sweepLeftovers?: (olderThanMs: number) => Promise<number>
  /** Frees connections, if the store holds any. */
  close?: () => void
}

/** A file in the store, as list() gives it. */
export interface ListedFile {
  key: string
  /** When it was last written (ms since the epoch; a bucket gives whole seconds). */
  modifiedMs: number
}

export interface BlobFile {
  key: string
  data: Buffer
  contentType: string
}

/** The headers of a request for a stored file that decide its answer (RFC 9110 13, 14), as sent. */
export interface ReadRequest {
  ifNoneMatch?: string
  ifMatch?: string
  ifModifiedSince?: string
  ifUnmodifiedSince?: string
  range?: string
  /** A HEAD: the answer without its body. */
  headOnly?: boolean
}

export type StoredFile =
  | { status: 304, etag: string | undefined, lastModified: Date | undefined }
  | { status: 412 }
  /** The range lies past the file's end; size, when known, is told in Content-Range. */
  | { status: 416, size: number | undefined }
  | {
    status: 200 | 206
    etag: string | undefined
    lastModified: Date | undefined
    contentType: string
    contentLength: number | undefined
    /** With 206: `bytes first-last/size`. */
    contentRange: string | undefined
    /** Undefined for a HEAD. */
    body: Buffer | NodeJS.ReadableStream | undefined
  }


/** Files are content-addressed and never change: caches may keep them for a year without asking. */
export const IMMUTABLE = 'public, max-age=31536000, immutable'

export const VARIANTS = ['120x120', '520x400'] as const
export type Variant = typeof VARIANTS[number]

/** `/xx/yy/zz/<sha256>.<ext>`: three folders from the hash, then the hash itself. */
export function contentPath (sha256: string, ext: string): string {
  if (!/^[0-9a-f]{64}$/.test(sha256) || !/^[a-z0-9]+$/.test(ext)) throw new Error('invalid content address')
  return `/${sha256.slice(0, 2)}/${sha256.slice(2, 4)}/${sha256.slice(4, 6)}/${sha256}.${ext}`
}

/** Store keys of an avatar's original and its variants, from its content path. */
export function avatarKeys (path: string): { original: string } & Record<Variant, string> {
  return {
    original: path.slice(1),
    '120x120': `120x120${path}`,
    '520x400': `520x400${path}`
  }
}

/**
 * Matches the shape of the keys avatarKeys() produces (anything else is never served), its parts
 * captured: the variant, the three folders, the hash, the extension.
 */
export const AVATAR_KEY_PATTERN = /^(?:(120x120|520x400)\/)?([0-9a-f]{2})\/([0-9a-f]{2})\/([0-9a-f]{2})\/([0-9a-f]{64})\.(jpeg|png|webp|gif)$/

/** An avatar key's parts: whose content it holds, and which file of it (no variant: the original). */
export interface AvatarKeyParts {
  sha256: string
  ext: string
  variant: Variant | undefined
}

/** The parts of a key avatarKeys() can produce (its folders those of its hash); undefined for any other. */
export function parseAvatarKey (key: string): AvatarKeyParts | undefined {
  const m = AVATAR_KEY_PATTERN.exec(key)
  if (m === null) return undefined
  const [, variant, x, y, z, sha256, ext] = m as unknown as [string, Variant | undefined, string, string, string, string, string]
  return sha256.startsWith(x + y + z) ? { sha256, ext, variant } : undefined
}
