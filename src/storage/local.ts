import fs from 'node:fs/promises'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import type { BlobFile, BlobStore } from './blob-store.js'

/** Resolves a user-influenced key under root, refusing anything that would land outside it. */
export function mustResolveUnder (root: string, key: string): string {
  const resolved = path.resolve(root, key)
  if (key.includes('\0') || !resolved.startsWith(root + path.sep)) throw new Error(`key escapes the storage root: ${JSON.stringify(key)}`)
  return resolved
}

/** Files on local disk under one root folder, written to a temporary name, flushed, then renamed. */
export class LocalBlobStore implements BlobStore {
  readonly kind = 'local'
  readonly root: string

  constructor (root: string) {
    this.root = path.resolve(root)
  }

  /**
   * Two rounds of disk flushes however many files: every file is written to a temporary name and its
   * data flushed (all at once), then each is renamed into place and its folder flushed (all at once).
   * A crash at any point leaves either no file at a key or a whole one.
   */
  async putAll (files: readonly BlobFile[]): Promise<void> {
    const staged = await Promise.allSettled(files.map(async (f) => await this.stage(f)))
    const ready = staged.flatMap((r) => r.status === 'fulfilled' && r.value !== undefined ? [r.value] : [])
    try {
      const failed = staged.find((r) => r.status === 'rejected')
      if (failed !== undefined) throw failed.reason
      await Promise.all(ready.map(async (f) => { await commit(f) }))
    } finally {
      // Whatever was not renamed into place (a failure on the way) is removed.
      await Promise.all(ready.map(async (f) => { await fs.rm(f.temp, { force: true }) }))
    }
  }

  /** Writes and flushes the file under a temporary name beside its key; undefined when the key exists. */
  private async stage ({ key, data }: BlobFile): Promise<StagedFile | undefined> {
    const target = mustResolveUnder(this.root, key)
    if (await this.exists(key)) return undefined
    const dir = path.dirname(target)
    await fs.mkdir(dir, { recursive: true })
    // Dot-named, so the static file server never serves it even for an instant.
    const temp = path.join(dir, `.${path.basename(target)}.${randomBytes(6).toString('hex')}.tmp`)
    const handle = await fs.open(temp, 'wx', 0o644)
    try {
      await handle.writeFile(data)
      // The data and the size: all a new file needs to be read back whole after a crash.
      await handle.datasync()
    } catch (err) {
      await handle.close()
      await fs.rm(temp, { force: true })
      throw err
    }
    await handle.close()
    return { temp, target, dir }
  }

  async exists (key: string): Promise<boolean> {
    try {
      await fs.access(mustResolveUnder(this.root, key))
      return true
    } catch {
      return false
    }
  }

  async delete (key: string): Promise<void> {
    await fs.rm(mustResolveUnder(this.root, key), { force: true })
  }

  async * keys (): AsyncIterable<string> {
    let entries: Array<{ name: string, parentPath: string, isFile: () => boolean }>
    try {
      entries = await fs.readdir(this.root, { recursive: true, withFileTypes: true })
    } catch {
      return
    }
    for (const e of entries) {
      if (e.isFile() && !e.name.startsWith('.')) yield path.relative(this.root, path.join(e.parentPath, e.name)).split(path.sep).join('/')
    }
  }

  async checkReady (): Promise<void> {
    await fs.mkdir(this.root, { recursive: true })
    await fs.access(this.root, fs.constants.W_OK)
  }
}

interface StagedFile {
  temp: string
  target: string
  dir: string
}

/** Renames a staged file into place and makes the rename durable. */
async function commit (file: StagedFile): Promise<void> {
  await fs.rename(file.temp, file.target)
  await syncDir(file.dir)
}

/** Makes a rename durable: the directory entry itself is flushed. */
async function syncDir (dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r')
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}
