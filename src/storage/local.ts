import fs from 'node:fs/promises'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import type { BlobStore } from './blob-store.js'

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

  async put (key: string, data: Buffer): Promise<boolean> {
    const target = mustResolveUnder(this.root, key)
    if (await this.exists(key)) return false
    const dir = path.dirname(target)
    await fs.mkdir(dir, { recursive: true })
    // Dot-named, so the static file server never serves it even for an instant.
    const temp = path.join(dir, `.${path.basename(target)}.${randomBytes(6).toString('hex')}.tmp`)
    const handle = await fs.open(temp, 'wx', 0o644)
    try {
      await handle.writeFile(data)
      await handle.sync()
    } finally {
      await handle.close()
    }
    try {
      await fs.rename(temp, target)
    } catch (err) {
      await fs.rm(temp, { force: true })
      throw err
    }
    await syncDir(dir)
    return true
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

/** Makes a rename durable: the directory entry itself is flushed. */
async function syncDir (dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r')
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}
