import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { parseAvatarKey, type BlobFile, type BlobStore, type ListedFile } from './blob-store.js'
import { setBounded } from '../util/bounded-map.js'

/** Resolves a user-influenced key under root, refusing anything that would land outside it. */
export function mustResolveUnder (root: string, key: string): string {
  const resolved = path.resolve(root, key)
  if (key.includes('\0') || !resolved.startsWith(root + path.sep)) throw new Error(`key escapes the storage root: ${JSON.stringify(key)}`)
  return resolved
}

/**
 * A file at its key that changed less than this long ago may still be on its way to the disk
 * (another request placed it and is flushing it now, or a process died before flushing it), so it
 * is flushed again before anything refers to it. Linux writes dirty data back within 30 s by
 * default (`vm.dirty_expire_centisecs`); older files are left alone.
 */
const UNSETTLED_MS = 120_000

/** The name a file has while it is written, before it is renamed to its own (see putAll, sweepLeftovers). */
const TEMP_NAME = /^\..+\.[0-9a-f]{12}\.tmp$/

/** How many files this process remembers having flushed itself (so it does not flush them again). */
const FLUSHED_KEPT = 4096

/** A file name of the layout on disk: `<sha256>.<ext>` or `<sha256>-<variant>.<ext>`, in the folder `<first two hex digits>`. */
const FILE_PARTS = /^([0-9a-f]{2})\/([0-9a-f]{64})(?:-(120x120|520x400))?\.(jpeg|png|webp|gif)$/

/**
 * Where a key's file lives under the root: `ab/<sha256>.jpeg`, `ab/<sha256>-120x120.jpeg`,
 * `ab/<sha256>-520x400.jpeg`. The key (the public path, `120x120/ab/cd/ef/<sha256>.jpeg`) keeps the
 * three folders the contract gives it, but on disk an image's three files share one folder of 256:
 * after the first few hundred images every folder exists, so a new image makes no folder and needs
 * four flushes (three files, one folder) where the key's own layout made up to nine folders and
 * needed twelve. Undefined for anything that is not an avatar key.
 */
export function fileOfKey (key: string): string | undefined {
  const parts = parseAvatarKey(key)
  if (parts === undefined) return undefined
  const { variant, sha256, ext } = parts
  return `${sha256.slice(0, 2)}/${sha256}${variant === undefined ? '' : `-${variant}`}.${ext}`
}

/** The key of a file of the layout on disk (relative to the root, slash-separated); undefined for any other file. */
function keyOfFile (relative: string): string | undefined {
  const m = FILE_PARTS.exec(relative)
  if (m === null || m[1] !== m[2]?.slice(0, 2)) return undefined
  const [, , sha256, variant, ext] = m as unknown as [string, string, string, string | undefined, string]
  const path = `${sha256.slice(0, 2)}/${sha256.slice(2, 4)}/${sha256.slice(4, 6)}/${sha256}.${ext}`
  return variant === undefined ? path : `${variant}/${path}`
}

/**
 * Files on local disk under one root folder, laid out as fileOfKey says. Each is written to a
 * dot-named temporary file and renamed into place, so a reader never sees part of one; then
 * everything is flushed in one round.
 *
 * Agentry's first layout put each file at its key itself (`120x120/ab/cd/ef/<sha256>.jpeg`). Files
 * a folder holds from then are still found (pathOf), collected (delete) and listed (keys), and
 * never written again: the same image ingested anew is written to the current layout (for a while
 * both may then hold it, and keys lists it twice).
 */
export class LocalBlobStore implements BlobStore {
  readonly kind = 'local'
  readonly root: string
  readonly location: string
  /** Files this process flushed, by path: the inode and change time they had then. */
  private readonly flushed = new Map<string, string>()

  constructor (root: string) {
    this.root = path.resolve(root)
    this.location = this.root
  }

  /**
   * One round of disk flushes however many files: all are written, then renamed into place, then
   * every new file and every folder whose entries changed is flushed at once. Until this resolves
   * nothing refers to the files, so a crash before the flush ends can at worst leave a file at its
   * key that is not whole; keys are content addresses, so an existing file is compared byte for
   * byte and replaced when it differs, never kept as a finished one.
   *
   * The folder, write and rename calls are synchronous: each takes microseconds, and on this kind
   * of machine a hop through libuv's thread pool costs more than the call itself (in one trial a
   * new avatar's store step took 5.5-6.5 ms with them asynchronous, 3.2-4.5 ms like this). Only
   * the flushes, which wait for the disk, leave the event loop.
   */
  async putAll (files: readonly BlobFile[]): Promise<void> {
    const toFlush = new Map<string, boolean>()
    const staged: Array<{ temp: string, target: string }> = []
    try {
      for (const { key, data } of files) {
        const target = this.fileOf(key)
        const dir = path.dirname(target)
        const existing = compareWith(target, data, this.flushed.get(target))
        if (existing === 'same') continue
        if (existing === 'same, unsettled') {
          // The file and every folder above it: whoever placed it may have made them too.
          toFlush.set(target, false)
          for (const d of foldersFrom(this.root, dir)) toFlush.set(d, true)
          continue
        }
        const firstMade = fs.mkdirSync(dir, { recursive: true })
        // Dot-named, so the static file server never serves it even for an instant.
        const temp = path.join(dir, `.${path.basename(target)}.${randomBytes(6).toString('hex')}.tmp`)
        staged.push({ temp, target })
        fs.writeFileSync(temp, data, { flag: 'wx', mode: 0o644 })
        toFlush.set(target, false)
        // The file's folder, and every folder made for it with the one that holds it.
        for (const d of foldersFrom(firstMade === undefined ? dir : path.dirname(firstMade), dir)) toFlush.set(d, true)
      }
      // Renamed only once every file is written, so a failure on the way (a full disk) leaves none.
      while (staged.length > 0) {
        const { temp, target } = staged[0] as { temp: string, target: string }
        fs.renameSync(temp, target)
        staged.shift()
      }
    } finally {
      for (const { temp } of staged) fs.rmSync(temp, { force: true })
    }
    await Promise.all([...toFlush].map(async ([p, isDir]) => {
      const flushed = await flush(p, isDir)
      if (!isDir) this.rememberFlushed(p, flushed)
    }))
  }

  private rememberFlushed (p: string, st: fs.Stats): void {
    setBounded(this.flushed, p, signature(st), FLUSHED_KEPT)
  }

  /** The path a key's file is written to. Throws for anything that is not an avatar key. */
  fileOf (key: string): string {
    const file = fileOfKey(key)
    if (file === undefined) throw new Error(`not an avatar key: ${JSON.stringify(key)}`)
    return path.join(this.root, file)
  }

  /**
   * The path of the file that holds a key's content now: where it is written, or else where the
   * first layout put it. Undefined when there is neither (or key is not an avatar key).
   */
  pathOf (key: string): string | undefined {
    const file = fileOfKey(key)
    if (file === undefined) return undefined
    for (const p of [path.join(this.root, file), mustResolveUnder(this.root, key)]) {
      if (fs.statSync(p, { throwIfNoEntry: false })?.isFile() === true) return p
    }
    return undefined
  }

  async has (key: string): Promise<boolean> {
    return await Promise.resolve(this.pathOf(key) !== undefined)
  }

  async get (key: string): Promise<Buffer | undefined> {
    const file = this.pathOf(key)
    if (file === undefined) return undefined
    try {
      return await fsp.readFile(file)
    } catch (err) {
      // Deleted since it was found (the collector).
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    }
  }

  async delete (key: string): Promise<void> {
    const target = this.fileOf(key)
    this.flushed.delete(target)
    // And where the first layout put it, if it is there.
    await Promise.all([target, mustResolveUnder(this.root, key)].map(async (p) => { await fsp.rm(p, { force: true }) }))
  }

  async * list (under?: string): AsyncIterable<ListedFile> {
    // An image's three files lie in the folder of its hash's first two digits (fileOfKey); files of
    // the first layout at their keys, in that folder too or under a size's folder.
    for await (const { file, name } of this.filesUnderRoot(under)) {
      if (name.startsWith('.')) continue
      const st = await fsp.lstat(file).catch(() => undefined)
      // Deleted since the folder was read.
      if (st === undefined) continue
      const relative = path.relative(this.root, file).split(path.sep).join('/')
      // A file of the current layout by its key; one of the first layout (at its key), or any other, as it lies.
      yield { key: keyOfFile(relative) ?? relative, modifiedMs: st.mtimeMs }
    }
  }

  /** Every file under the root (or its folder `under`), dot-named ones too, read as it goes (none when there is no such folder). */
  private async * filesUnderRoot (under?: string): AsyncIterable<{ file: string, name: string }> {
    let dir: fs.Dir
    try {
      dir = await fsp.opendir(under === undefined ? this.root : mustResolveUnder(this.root, under), { recursive: true })
    } catch {
      return
    }
    for await (const e of dir) if (e.isFile()) yield { file: path.join(e.parentPath, e.name), name: e.name }
  }

  /**
   * Deletes the temporary files that writes which never finished left behind (a crash between a
   * file's write and its rename): dot-named `.<name>.<12 hex digits>.tmp` files last changed more
   * than olderThanMs ago. A write renames its temporary file within milliseconds, so an old one
   * belongs to nobody, whichever instance sharing the folder made it. Reads the folder as it goes,
   * never all of it at once. Returns how many it deleted.
   */
  async sweepLeftovers (olderThanMs: number): Promise<number> {
    const before = Date.now() - olderThanMs
    let removed = 0
    for await (const { file, name } of this.filesUnderRoot()) {
      if (!TEMP_NAME.test(name)) continue
      const st = await fsp.lstat(file).catch(() => undefined)
      if (st === undefined || st.mtimeMs >= before) continue
      await fsp.rm(file, { force: true })
      removed++
    }
    return removed
  }

  async checkReady (): Promise<void> {
    await fsp.mkdir(this.root, { recursive: true })
    await fsp.access(this.root, fs.constants.W_OK)
  }
}

/**
 * Whether the file at p holds exactly these bytes (one more byte is read, to tell a longer file),
 * and if so whether it may still need flushing: not when it is old, nor when it is the very file
 * (same inode, same change time) this process flushed.
 */
function compareWith (p: string, data: Buffer, flushedAs: string | undefined): 'missing or different' | 'same' | 'same, unsettled' {
  let fd: number
  try {
    fd = fs.openSync(p, 'r')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'missing or different'
    throw err
  }
  try {
    const st = fs.fstatSync(fd)
    if (st.size !== data.length) return 'missing or different'
    const buffer = Buffer.allocUnsafe(data.length + 1)
    let read = 0
    for (let n = -1; n !== 0 && read < buffer.length; read += n) n = fs.readSync(fd, buffer, read, buffer.length - read, read)
    if (read !== data.length || !buffer.subarray(0, read).equals(data)) return 'missing or different'
    return Date.now() - st.ctimeMs < UNSETTLED_MS && signature(st) !== flushedAs ? 'same, unsettled' : 'same'
  } finally {
    fs.closeSync(fd)
  }
}

function signature (st: fs.Stats): string {
  return `${st.dev}:${st.ino}:${st.ctimeMs}`
}

/** `from` and every folder below it down to `to` (`from` is `to` or one of its ancestors). */
function foldersFrom (from: string, to: string): string[] {
  const out: string[] = []
  for (let d = to; ; d = path.dirname(d)) {
    out.push(d)
    if (d === from || d === path.dirname(d)) return out
  }
}

/**
 * Flushes a file's data (and size) or a folder's entries to the disk: one trip through the thread
 * pool. Returns what it flushed, as it was then.
 */
async function flush (p: string, isDir: boolean): Promise<fs.Stats> {
  const fd = fs.openSync(p, 'r')
  try {
    await new Promise<void>((resolve, reject) => {
      (isDir ? fs.fsync : fs.fdatasync)(fd, (err) => { if (err === null) resolve(); else reject(err) })
    })
    return fs.fstatSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}
