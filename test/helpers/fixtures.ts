import http from 'node:http'
import zlib from 'node:zlib'
import type { AddressInfo } from 'node:net'
import sharp from 'sharp'

/** Small images made by the tests themselves, served from loopback like a real image host would. */
export interface FixtureImages {
  jpeg: Buffer
  png: Buffer
  webp: Buffer
  gif: Buffer
  /** 300x200 pixels stored sideways with EXIF orientation 6 (shows as 200x300) plus GPS and a comment. */
  rotatedJpeg: Buffer
  tiny: Buffer
  tiff: Buffer
  /** The two frames of gif as an animated WebP marked with EXIF orientation 6 ("rotate 90"). */
  orientedAnimatedWebp: Buffer
}

export async function makeImages (): Promise<FixtureImages> {
  // A picture with structure (not a flat colour), so crops and resizes are visible in the bytes.
  const gradient = (w: number, h: number) => {
    const raw = Buffer.alloc(w * h * 3)
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = (y * w + x) * 3
        raw[i] = (x * 255 / w) | 0
        raw[i + 1] = (y * 255 / h) | 0
        raw[i + 2] = 128
      }
    }
    return sharp(raw, { raw: { width: w, height: h, channels: 3 } })
  }
  const frames = await Promise.all([0, 1].map((n) => sharp({ create: { width: 64, height: 48, channels: 4, background: n === 0 ? '#ff0000' : '#0000ff' } }).png().toBuffer()))
  return {
    jpeg: await gradient(400, 400).jpeg({ quality: 85 }).toBuffer(),
    png: await gradient(640, 480).png().toBuffer(),
    webp: await gradient(800, 300).webp().toBuffer(),
    gif: await sharp(frames, { join: { animated: true } }).gif({ loop: 0, delay: [100, 100] }).toBuffer(),
    rotatedJpeg: await gradient(300, 200).jpeg()
      .withExif({ IFD0: { ImageDescription: 'secret comment', Artist: 'someone' }, IFD3: { GPSLatitudeRef: 'N', GPSLatitude: '48/1 51/1 0/1' } })
      .withMetadata({ orientation: 6 })
      .toBuffer(),
    tiny: await gradient(40, 30).png().toBuffer(),
    tiff: await gradient(50, 50).tiff().toBuffer(),
    // Marked in its top left corner (white on red, then on blue), so a turn shows where it went.
    orientedAnimatedWebp: await sharp(await Promise.all(frames.map(async (frame) => await sharp(frame)
      .composite([{ input: { create: { width: 16, height: 16, channels: 4, background: '#ffffff' } }, left: 0, top: 0 }]).png().toBuffer())), { join: { animated: true } })
      .webp({ loop: 3, delay: [100, 150], lossless: true }).withMetadata({ orientation: 6 }).toBuffer()
  }
}

/**
 * A GIF of `frames` frames of 1x1 pixel (23 bytes each): next to nothing to decode, but each frame
 * is enlarged to 120x120 for the small variant.
 */
export function manyFramesGif (frames: number): Buffer {
  const screen = Buffer.from([0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 1, 0, 1, 0, 0x80, 0, 0, 0, 0, 0, 255, 255, 255])
  const loop = Buffer.concat([Buffer.from([0x21, 0xff, 0x0b]), Buffer.from('NETSCAPE2.0', 'latin1'), Buffer.from([3, 1, 0, 0, 0])])
  const frame = Buffer.from([0x21, 0xf9, 4, 0, 0, 0, 0, 0, 0x2c, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0x44, 1, 0])
  return Buffer.concat([screen, loop, ...Array.from({ length: frames }, () => frame), Buffer.from([0x3b])])
}

/** An SVG as Illustrator writes one: a stylesheet instruction, and a DOCTYPE with entities. */
export const ILLUSTRATOR_SVG = Buffer.from('<?xml version="1.0" encoding="utf-8"?>\n<?xml-stylesheet type="text/css" href="style.css"?>\n<!-- Generator: Adobe Illustrator -->\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd" [\n\t<!ENTITY ns_extend "http://ns.adobe.com/Extensibility/1.0/">\n\t<!ENTITY ns_ai "http://ns.adobe.com/AdobeIllustrator/10.0/">\n]>\n<svg version="1.1" xmlns="http://www.w3.org/2000/svg" width="100" height="100"><circle cx="50" cy="50" r="40"/></svg>')

/** A PNG whose header claims 30000x30000 pixels: decoding it would need gigabytes. */
export function decompressionBomb (): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const body = Buffer.concat([Buffer.from(type, 'latin1'), data])
    const len = Buffer.alloc(4); len.writeUInt32BE(data.length)
    const crc = Buffer.alloc(4); crc.writeUInt32BE(zlib.crc32(body))
    return Buffer.concat([len, body, crc])
  }
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(30000, 0); ihdr.writeUInt32BE(30000, 4)
  ihdr[8] = 8; ihdr[9] = 0 // 8-bit greyscale
  const rows = zlib.deflateSync(Buffer.alloc(30001 * 64), { level: 9 }) // the first rows; the rest would follow
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr), chunk('IDAT', rows), chunk('IEND', Buffer.alloc(0))])
}

export const SVG = Buffer.from('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><script>alert(1)</script><circle cx="50" cy="50" r="40"/></svg>')

export interface FixtureServer {
  url: string
  images: FixtureImages
  /** How many requests each path received. */
  hits: Map<string, number>
  /** How many answers on this path are still being sent (the client has not hung up). */
  unfinished: (path: string) => number
  /** TCP connections accepted so far, and how many of them /reset-if-reused.jpg cut. */
  connections: () => number
  resets: () => number
  close: () => Promise<void>
}

/**
 * Serves the fixtures, good and bad: each image format, an EXIF-rotated photo, a truncated JPEG,
 * text, text that claims to be a JPEG, an SVG, a TIFF, a decompression bomb, a slow and an endless
 * download, a redirect loop, a redirect to an image, a 404, a 404 and a redirect whose bodies never end,
 * and a host that cuts reused connections.
 */
export async function startFixtureServer (): Promise<FixtureServer> {
  const images = await makeImages()
  const hits = new Map<string, number>()
  const unfinished = new Map<string, number>()
  const open = new Set<http.ServerResponse>()
  const timers = new Set<NodeJS.Timeout>()
  const send = (res: http.ServerResponse, type: string, body: Buffer) => {
    res.writeHead(200, { 'content-type': type, 'content-length': body.length }).end(body)
  }
  const served = new WeakMap<object, number>()
  let connections = 0
  let resets = 0
  /** Sends the JPEG 64 bytes every 100 ms, then ends (unless the client hung up first). */
  const trickle = (res: http.ServerResponse): void => {
    open.add(res)
    let offset = 0
    const timer = setInterval(() => {
      if (res.destroyed || offset >= images.jpeg.length) { clearInterval(timer); timers.delete(timer); res.end(); return }
      res.write(images.jpeg.subarray(offset, offset + 64)); offset += 64
    }, 100)
    timers.add(timer)
  }
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/'
    hits.set(path, (hits.get(path) ?? 0) + 1)
    const before = served.get(req.socket) ?? 0
    served.set(req.socket, before + 1)
    switch (path) {
      // A host that closes a kept connection just as it is used again (its idle timer ran out).
      case '/reset-if-reused.jpg':
        if (before > 0) { resets++; req.socket.destroy(); return }
        return send(res, 'image/jpeg', images.jpeg)
      case '/photo.jpg': return send(res, 'image/jpeg', images.jpeg)
      case '/late.jpg': {
        // The JPEG, whole, after 1 s: a slow host that still answers within the deadline.
        const timer = setTimeout(() => { timers.delete(timer); send(res, 'image/jpeg', images.jpeg) }, 1000)
        timers.add(timer)
        return
      }
      case '/photo-copy.jpg': return send(res, 'image/jpeg', images.jpeg)
      case '/photo.png': return send(res, 'image/png', images.png)
      case '/photo.webp': return send(res, 'image/webp', images.webp)
      case '/anim.gif': return send(res, 'image/gif', images.gif)
      case '/tiny.png': return send(res, 'image/png', images.tiny)
      case '/rotated.jpg': return send(res, 'image/jpeg', images.rotatedJpeg)
      case '/no-type': return send(res, 'application/octet-stream', images.jpeg)
      case '/truncated.jpg': return send(res, 'image/jpeg', images.jpeg.subarray(0, Math.floor(images.jpeg.length / 2)))
      case '/text.txt': return send(res, 'text/plain', Buffer.from('hello, I am not an image'))
      case '/liar.jpg': return send(res, 'image/jpeg', Buffer.from('<html><body>not a jpeg at all</body></html>'))
      case '/image.svg': return send(res, 'image/svg+xml', SVG)
      case '/svg-as.png': return send(res, 'image/png', SVG)
      case '/illustrator.svg': return send(res, 'image/svg+xml', ILLUSTRATOR_SVG)
      case '/photo.tiff': return send(res, 'image/tiff', images.tiff)
      case '/bomb.png': return send(res, 'image/png', decompressionBomb())
      case '/frames.gif': return send(res, 'image/gif', manyFramesGif(1500))
      case '/oriented-anim.webp': return send(res, 'image/webp', images.orientedAnimatedWebp)
      case '/slow-unsized.jpg':
        // As /slow.jpg, but with neither a length nor chunks: the body ends when the connection does.
        res.useChunkedEncodingByDefault = false
        res.writeHead(200, { 'content-type': 'image/jpeg', connection: 'close' })
        trickle(res)
        return
      case '/empty': return send(res, 'image/png', Buffer.alloc(0))
      case '/redirect': res.writeHead(302, { location: '/photo.jpg' }).end(); return
      case '/loop-a': res.writeHead(302, { location: '/loop-b' }).end(); return
      case '/loop-b': res.writeHead(301, { location: '/loop-a' }).end(); return
      case '/server-error': res.writeHead(500).end('oops'); return
      case '/huge-declared': res.writeHead(200, { 'content-type': 'image/jpeg', 'content-length': 50 * 1024 * 1024 }); res.write(images.jpeg.subarray(0, 100)); open.add(res); return
      case '/slow.jpg':
        // A valid JPEG, one small piece every 100 ms: slower than any sane deadline.
        res.writeHead(200, { 'content-type': 'image/jpeg', 'content-length': images.jpeg.length })
        trickle(res)
        return
      case '/endless': {
        // Never ends on its own: 64 KiB chunks until the client hangs up (or 30 s pass).
        res.writeHead(200, { 'content-type': 'image/jpeg' })
        open.add(res)
        const chunk = Buffer.concat([images.jpeg.subarray(0, 2), Buffer.alloc(65534, 0x41)])
        const started = Date.now()
        const pump = () => {
          while (!res.destroyed && Date.now() - started < 30_000) {
            if (!res.write(chunk)) { res.once('drain', pump); return }
          }
          res.end()
        }
        pump()
        return
      }
      // Answers that are not the image, whose bodies never end: 1 KiB every 20 ms until the client
      // hangs up (or 30 s pass). `unfinished` says how many are still being sent.
      case '/endless-404':
      case '/endless-redirect': {
        res.writeHead(path === '/endless-404' ? 404 : 302, path === '/endless-404' ? { 'content-type': 'text/html' } : { location: '/photo.jpg' })
        open.add(res)
        unfinished.set(path, (unfinished.get(path) ?? 0) + 1)
        res.once('close', () => { unfinished.set(path, (unfinished.get(path) ?? 1) - 1) })
        const started = Date.now()
        const timer = setInterval(() => {
          if (res.destroyed || Date.now() - started > 30_000) { clearInterval(timer); timers.delete(timer); res.end(); return }
          res.write(Buffer.alloc(1024, 0x20))
        }, 20)
        timers.add(timer)
        return
      }
      default: res.writeHead(404, { 'content-type': 'text/plain' }).end('not found')
    }
  })
  server.on('connection', () => { connections++ })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    images,
    hits,
    unfinished: (path) => unfinished.get(path) ?? 0,
    connections: () => connections,
    resets: () => resets,
    close: async () => {
      for (const t of timers) clearInterval(t)
      for (const r of open) r.destroy()
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => { resolve() }))
    }
  }
}
