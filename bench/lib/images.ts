import http from 'node:http'
import type { AddressInfo } from 'node:net'
import sharp from 'sharp'

const SIZE = 400

/** A 400x400 gradient with structure, like a photo's worth of detail rather than a flat colour. */
function gradient (): Buffer {
  const raw = Buffer.alloc(SIZE * SIZE * 3)
  for (let y = 0; y < SIZE; y++) {
    for (let x = 0; x < SIZE; x++) {
      const i = (y * SIZE + x) * 3
      raw[i] = (x * 255 / SIZE) | 0
      raw[i + 1] = (y * 255 / SIZE) | 0
      raw[i + 2] = ((x ^ y) & 0xff)
    }
  }
  return raw
}

/**
 * Grows `images` in place to n distinct 400x400 JPEGs: the same picture with a 16x16 block in one
 * corner coloured from the image's index, so the bytes (and the processed original's sha256)
 * differ for every one (up to 2^16 images). Returns the same array.
 */
export async function makeJpegs (n: number, images: Buffer[] = []): Promise<Buffer[]> {
  const base = gradient()
  const encode = async (i: number) => {
    const raw = Buffer.from(base)
    for (let y = 0; y < 16; y++) {
      for (let x = 0; x < 16; x++) {
        const p = (y * SIZE + x) * 3
        raw[p] = i & 0xff
        raw[p + 1] = (i >> 8) & 0xff
        raw[p + 2] = ((i * 37) + x + y) & 0xff
      }
    }
    images[i] = await sharp(raw, { raw: { width: SIZE, height: SIZE, channels: 3 } }).jpeg({ quality: 85 }).toBuffer()
  }
  const batch = 16
  for (let i = images.length; i < n; i += batch) {
    await Promise.all(Array.from({ length: Math.min(batch, n - i) }, (_, k) => encode(i + k)))
  }
  return images
}

export interface FixtureServer {
  url: string
  /** Requests served, by image index. */
  hits: () => number
  distinctServed: () => number
  close: () => Promise<void>
}

/** Serves /img/<i>.jpg (image i modulo the pool, which may grow meanwhile) on loopback, as a remote image host would. */
export async function startFixtureServer (images: Buffer[]): Promise<FixtureServer> {
  let hits = 0
  const served = new Set<number>()
  const server = http.createServer((req, res) => {
    const m = /^\/img\/(\d+)\.jpg$/.exec(req.url ?? '')
    if (m === null) {
      res.writeHead(404).end()
      return
    }
    const i = Number(m[1]) % images.length
    const body = images[i] as Buffer
    hits++
    served.add(i)
    res.writeHead(200, { 'content-type': 'image/jpeg', 'content-length': body.length })
    res.end(body)
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    hits: () => hits,
    distinctServed: () => served.size,
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((resolve) => { server.close(() => { resolve() }) })
    }
  }
}
