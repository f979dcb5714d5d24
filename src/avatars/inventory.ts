import type { Db, Transact } from '../db/index.js'
import { avatarContentPage, referencedHashes } from '../db/repositories/avatars.js'
import { knownToCollector, scheduleBlobGcIfAbsent } from '../db/repositories/blob-gc.js'
import { avatarKeys, contentPath, parseAvatarKey, VARIANTS, type BlobStore, type Variant } from '../storage/blob-store.js'
import { MIME_TYPES, processAvatar, type ImageFormat } from './process.js'

/** One of an image's three files. */
export type ImageFile = Variant | 'original'
const IMAGE_FILES: readonly ImageFile[] = ['original', ...VARIANTS]

/** Which of an image's three files a listing found, one bit each. */
const BIT: Record<ImageFile, number> = { original: 1, '120x120': 2, '520x400': 4 }
const WHOLE = 7

/** Rows per query (the default page size): well under SQLite's parameter limit. */
const BATCH = 500

/** Examples kept of each finding: enough to act on, bounded however large the store. */
const EXAMPLES = 20

/** An image in the store: its content address and the path the API gives it (`info.path`). */
export interface StoredImageRef {
  sha256: string
  ext: string
  path: string
}

/** An image avatars refer to that lacks files. */
export interface IncompleteImage extends StoredImageRef {
  /** How many avatars refer to it. */
  avatars: number
  missing: ImageFile[]
}

export interface FileInventory {
  /** Where the files are (BlobStore.location). */
  location: string
  /** Files in the store, and the images they hold (an original and its two variants each). */
  files: number
  images: number
  /** Images avatars refer to whose three files are all there. */
  whole: number
  /** Images avatars refer to with files missing: those avatars' URLs answer 404. All of them (sweep mends what it can). */
  incomplete: IncompleteImage[]
  /** Images nothing refers to that the file collector has on its schedule, or is deleting now. */
  collecting: number
  /** Images written too recently to judge: a file younger than the grace, or an avatar made while this ran. */
  recent: number
  /** Images nothing refers to and nothing will delete: left by writes that never finished. */
  leftovers: { files: number, images: StoredImageRef[] }
  /** Files that are not avatar files at all; never touched. */
  other: { count: number, examples: string[] }
}

interface Found {
  bits: number
  files: number
  newestMs: number
}

/**
 * Compares the avatar store with the avatar records: which images are whole, which avatars lost
 * files, and which files nothing refers to or will delete. A process that stops between storing an
 * image's files and committing the row that refers to them (a crash, a kill -9) leaves files that no
 * row names and that the file collector never hears of; this is how they are found.
 *
 * Reads the whole listing, then the records in pages; holds one small entry per image in memory
 * (~200 bytes), and keeps every incomplete image (for mendVariants). Running servers go on as
 * usual meanwhile: what changes during the run is judged "recent", not wrong.
 */
export async function takeInventory (
  db: Db, store: BlobStore, options: { nowMs: number, recentMs: number, pageSize?: number }
): Promise<FileInventory> {
  const { nowMs, recentMs, pageSize = BATCH } = options
  const found = new Map<string, Found>()
  const inventory: FileInventory = {
    location: store.location,
    files: 0,
    images: 0,
    whole: 0,
    incomplete: [],
    collecting: 0,
    recent: 0,
    leftovers: { files: 0, images: [] },
    other: { count: 0, examples: [] }
  }

  for await (const { key, modifiedMs } of store.list()) {
    inventory.files++
    if (!tally(found, key, modifiedMs)) {
      inventory.other.count++
      if (inventory.other.examples.length < EXAMPLES) inventory.other.examples.push(key)
    }
  }
  inventory.images = found.size

  // Every image avatars refer to, against what the listing found.
  let after: string | undefined
  for (;;) {
    const page = await avatarContentPage(db, after, pageSize)
    for (const content of page) {
      const id = imageId(content.sha256, content.ext)
      const f = found.get(id)
      found.delete(id)
      if (f?.bits === WHOLE) inventory.whole++
      // Its first avatar was made after the listing began (1 s: created_at is in whole seconds).
      else if (content.first_created_at * 1000 >= nowMs - 1000) inventory.recent++
      else {
        const missing = IMAGE_FILES.filter((k) => ((f?.bits ?? 0) & BIT[k]) === 0)
        inventory.incomplete.push({ sha256: content.sha256, ext: content.ext, path: contentPath(content.sha256, content.ext), avatars: content.avatars, missing })
      }
    }
    const last = page[page.length - 1]
    if (last === undefined || page.length < pageSize) break
    after = last.sha256
  }

  // What is left no avatar referred to when its page was read: asked again (one may have been made
  // since), and of the collector.
  const judged = await judgeUnreferenced(db, found, { nowMs, recentMs, pageSize })
  inventory.recent += judged.recent
  inventory.collecting = judged.collecting
  inventory.leftovers = judged.leftovers
  return inventory
}

/** Counts a listed file into its image's entry; false when the key is no avatar file's. */
function tally (found: Map<string, Found>, key: string, modifiedMs: number): boolean {
  const parts = parseAvatarKey(key)
  if (parts === undefined) return false
  const id = imageId(parts.sha256, parts.ext)
  let f = found.get(id)
  if (f === undefined) {
    f = { bits: 0, files: 0, newestMs: 0 }
    found.set(id, f)
  }
  f.bits |= BIT[parts.variant ?? 'original']
  f.files++
  f.newestMs = Math.max(f.newestMs, modifiedMs)
  return true
}

/**
 * Of listed images that no avatar referred to when last looked at: those an avatar refers to by
 * now, or written too recently to judge (recent); those on the collector's schedule or being
 * deleted (collecting); and the rest, which nothing refers to and nothing will delete (leftovers).
 */
async function judgeUnreferenced (
  db: Db, found: ReadonlyMap<string, Found>, options: { nowMs: number, recentMs: number, pageSize: number }
): Promise<Pick<FileInventory, 'recent' | 'collecting' | 'leftovers'>> {
  const { nowMs, recentMs, pageSize } = options
  const judged: Pick<FileInventory, 'recent' | 'collecting' | 'leftovers'> = { recent: 0, collecting: 0, leftovers: { files: 0, images: [] } }
  const rest = [...found]
  for (let i = 0; i < rest.length; i += pageSize) {
    const batch = rest.slice(i, i + pageSize).map(([id, f]) => ({ ...imageOf(id), f }))
    const hashes = batch.map((b) => b.sha256)
    const [referenced, known] = await Promise.all([referencedHashes(db, hashes), knownToCollector(db, hashes)])
    for (const { sha256, ext, f } of batch) {
      if (referenced.has(sha256)) judged.recent++
      else if (known.has(sha256)) judged.collecting++
      else if (nowMs - f.newestMs < recentMs) judged.recent++
      else {
        judged.leftovers.images.push({ sha256, ext, path: contentPath(sha256, ext) })
        judged.leftovers.files += f.files
      }
    }
  }
  return judged
}

/** The 256 shards of the store: images by the first two hex digits of their hash. */
export const SHARDS: readonly string[] = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'))

/**
 * The leftovers among the images of one shard (hashes beginning with `shard`, two hex digits): files
 * nothing refers to and nothing will delete, older than recentMs, as takeInventory finds them for
 * the whole store. Lists only that shard's folders (its three, whatever the layout: see
 * BlobStore.list), so it holds 1/256 of the store's images in memory at most. For the server's own
 * periodic look (see startMaintenance); files of other shapes are left alone.
 */
export async function leftoversInShard (
  db: Db, store: BlobStore, shard: string, options: { nowMs: number, recentMs: number }
): Promise<FileInventory['leftovers']> {
  const found = new Map<string, Found>()
  for (const under of [`${shard}/`, ...VARIANTS.map((v) => `${v}/${shard}/`)]) {
    for await (const { key, modifiedMs } of store.list(under)) {
      if (parseAvatarKey(key)?.sha256.startsWith(shard) === true) tally(found, key, modifiedMs)
    }
  }
  // Those avatars refer to are found so and left out (judgeUnreferenced asks, in pages).
  return (await judgeUnreferenced(db, found, { ...options, pageSize: BATCH })).leftovers
}

/**
 * Looks through the store shard by shard (leftoversInShard) and hands what writes that never
 * finished left there to the file collector (scheduleLeftovers), to be deleted graceSeconds later
 * unless an avatar refers to them by then: what `agentry files sweep` does with leftovers, done by
 * a running server. Files younger than graceSeconds are left for a later look. Stops between two
 * shards once signal aborts. Returns how many images it handed over.
 */
export async function handOverLeftovers (
  db: Db, transact: Transact, store: BlobStore, options: { graceSeconds: number, signal?: AbortSignal }
): Promise<number> {
  const { graceSeconds, signal } = options
  let handed = 0
  for (const shard of SHARDS) {
    if (signal?.aborted === true) break
    const nowMs = Date.now()
    const { images } = await leftoversInShard(db, store, shard, { nowMs, recentMs: graceSeconds * 1000 })
    if (images.length > 0) handed += await scheduleLeftovers(transact, images, Math.floor(nowMs / 1000) + graceSeconds)
  }
  return handed
}

/**
 * Hands leftover images to the file collector: each goes on its schedule, to be deleted at
 * eligibleAt (unix seconds) unless an avatar refers to it by then, exactly as an image whose last
 * avatar went. Not sooner: a write storing the same image may be on its way, and the collector's
 * claim is what it relies on (see AgentService.maintain). Images an avatar refers to by now, or
 * already scheduled, are left as they are. Returns how many were scheduled.
 */
export async function scheduleLeftovers (transact: Transact, images: readonly StoredImageRef[], eligibleAt: number): Promise<number> {
  let scheduled = 0
  for (let i = 0; i < images.length; i += BATCH) {
    const batch = images.slice(i, i + BATCH)
    scheduled += await transact(async (trx) => {
      const referenced = await referencedHashes(trx, batch.map((b) => b.sha256))
      const unreferenced = batch.filter((b) => !referenced.has(b.sha256))
      await scheduleBlobGcIfAbsent(trx, unreferenced, eligibleAt)
      return unreferenced.length
    })
  }
  return scheduled
}

/** What mendVariants did: the images it made whole, and those it could not, with why. */
export interface Mending {
  mended: IncompleteImage[]
  /** Variant files made again, in all. */
  files: number
  unmended: Array<{ image: IncompleteImage, reason: string }>
}

/**
 * Makes an incomplete image's missing variants again from its stored original, as an ingest makes
 * them: processAvatar() on the original's bytes (already oriented and stripped, so the variants are
 * encoded from a once-encoded image rather than from the download; where the original fits in
 * 520x400, that size is the stored original byte for byte, as the ingest made it). Only sizes
 * still missing just before they are written are written: a file that is there is left as it is.
 * An image whose original is missing cannot be mended: its avatars must be set again. One image
 * at a time, each read whole (a few MB at most).
 */
export async function mendVariants (store: BlobStore, images: readonly IncompleteImage[], limits: { maxPixels: number, maxFrames: number }): Promise<Mending> {
  const mending: Mending = { mended: [], files: 0, unmended: [] }
  for (const image of images) {
    if (image.missing.includes('original')) {
      mending.unmended.push({ image, reason: 'its original is missing' })
      continue
    }
    const keys = avatarKeys(image.path)
    try {
      const original = await store.get(keys.original)
      if (original === undefined) {
        mending.unmended.push({ image, reason: 'its original is gone (deleted since the listing)' })
        continue
      }
      // Only what is still missing: an ingest of the same image may have stored it since the listing
      // (on local disk putAll would replace a file whose bytes differ).
      const missing: Variant[] = []
      for (const v of VARIANTS) if (image.missing.includes(v) && !await store.has(keys[v])) missing.push(v)
      if (missing.length > 0) {
        const made = await processAvatar(original, limits)
        // processAvatar gives its original as the 520x400 size when the image fits in it; that size
        // is then the stored original itself, as the ingest stored it.
        const variant = (v: Variant) => (v === '520x400' && made.variants[v] === made.original ? original : made.variants[v])
        const contentType = MIME_TYPES[image.ext as ImageFormat]
        await store.putAll(missing.map((v) => ({ key: keys[v], data: variant(v), contentType })))
      }
      mending.mended.push(image)
      mending.files += missing.length
    } catch (err) {
      mending.unmended.push({ image, reason: `its original could not be read or processed: ${err instanceof Error ? err.message : String(err)}` })
    }
  }
  return mending
}

function imageId (sha256: string, ext: string): string {
  return `${sha256}.${ext}`
}

function imageOf (id: string): { sha256: string, ext: string } {
  const dot = id.indexOf('.')
  return { sha256: id.slice(0, dot), ext: id.slice(dot + 1) }
}
