import sharp from 'sharp'
import type { Metadata, Sharp, SharpOptions } from 'sharp'
import { errors } from '../errors/index.js'
import type { Variant } from '../storage/blob-store.js'

export const IMAGE_FORMATS = ['jpeg', 'png', 'webp', 'gif'] as const
export type ImageFormat = typeof IMAGE_FORMATS[number]

export const MIME_TYPES: Record<ImageFormat, string> = {
  jpeg: 'image/jpeg',
  png: 'image/png',
  webp: 'image/webp',
  gif: 'image/gif'
}

export interface ProcessedAvatar {
  format: ImageFormat
  /** The stored original: oriented, metadata stripped. */
  original: Buffer
  width: number
  height: number
  variants: Record<Variant, Buffer>
}

const OTHER_FORMATS: Array<[string, (b: Buffer) => boolean]> = [
  // Processing instructions (<?xml?>, <?xml-stylesheet?>) and comments in any order, and a DOCTYPE
  // with or without an internal subset (Illustrator writes its entities there), before <svg.
  ['SVG', (b) => /^\s*(?:(?:<\?[\s\S]*?\?>|<!--[\s\S]*?-->)\s*)*(?:<!DOCTYPE\s+svg[^>[]*(?:\[[\s\S]*?\])?\s*>\s*)?(?:(?:<\?[\s\S]*?\?>|<!--[\s\S]*?-->)\s*)*<svg[\s>]/i.test(b.subarray(0, 8192).toString('utf8').replace(/^\uFEFF/, ''))],
  ['TIFF', (b) => b.subarray(0, 4).equals(Buffer.from('II*\0', 'latin1')) || b.subarray(0, 4).equals(Buffer.from('MM\0*', 'latin1'))],
  ['BMP', (b) => b.subarray(0, 2).toString('latin1') === 'BM'],
  ['HEIF/AVIF', (b) => b.subarray(4, 8).toString('latin1') === 'ftyp'],
  ['ICO', (b) => b.subarray(0, 4).equals(Buffer.from([0, 0, 1, 0]))]
]

/**
 * libvips keeps a cache of recent operations (50 MB by default). Every avatar is new bytes, so
 * the cache never hits and only adds to the process's memory: turn it off once at start.
 */
export function configureImageLibrary (): void {
  sharp.cache(false)
}

/** Decides the format from the bytes alone; a Content-Type header is never trusted. */
export function sniffFormat (b: Buffer): ImageFormat | undefined {
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'jpeg'
  if (b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) return 'png'
  if (/^GIF8[79]a$/.test(b.subarray(0, 6).toString('latin1'))) return 'gif'
  if (b.subarray(0, 4).toString('latin1') === 'RIFF' && b.subarray(8, 12).toString('latin1') === 'WEBP') return 'webp'
  return undefined
}

function mustBeAcceptedFormat (bytes: Buffer): ImageFormat {
  const format = sniffFormat(bytes)
  if (format !== undefined) return format
  const other = OTHER_FORMATS.find(([, test]) => test(bytes))?.[0]
  if (other !== undefined) {
    throw errors.avatar('avatar_unsupported_format', `The avatar is ${other === 'ICO' ? 'an' : 'a'} ${other} image; accepted formats are JPEG, PNG, WebP and GIF.`)
  }
  throw errors.avatar('avatar_not_an_image', 'The avatar is not an image: its bytes are not JPEG, PNG, WebP or GIF (check the URL, or the file uploaded).')
}

const ENCODERS: Record<ImageFormat, (s: Sharp) => Sharp> = {
  jpeg: (s) => s.jpeg({ quality: 90 }),
  png: (s) => s.png(),
  webp: (s) => s.webp({ quality: 90 }),
  gif: (s) => s.gif()
}

/** Pixels of one frame's 120x120 variant: made for every frame, however small the frame. */
const SMALL_VARIANT_PIXELS = 120 * 120

/** Waits for room to decode this many pixels (see ProcessingBudget); the release, called once done. */
export type Admission = (pixels: number) => Promise<() => void>

/**
 * Turns downloaded bytes into the stored original and its variants. The pixel count is checked
 * from the header before any pixel is decoded, so a decompression bomb costs nothing: the frames'
 * pixels and those of their 120x120 variants together (so that thousands of 1x1 frames, each
 * enlarged to 120x120, are one too), and the number of frames. Then, before decoding, admit waits
 * for room for those pixels among the images in progress.
 */
export async function processAvatar (bytes: Buffer, limits: { maxPixels: number, maxFrames: number }, admit?: Admission): Promise<ProcessedAvatar> {
  const format = mustBeAcceptedFormat(bytes)
  const animated = format === 'gif' || format === 'webp'
  // limitInputPixels stays as a second guard inside libvips; failOn 'warning' rejects truncated data.
  const options: SharpOptions = { animated, failOn: 'warning', limitInputPixels: false }
  let meta: Metadata
  try {
    meta = await sharp(bytes, options).metadata()
  } catch (err) {
    throw corrupt(err)
  }
  const frameHeight = meta.pageHeight ?? meta.height
  const frames = meta.pages ?? 1
  if (frames > limits.maxFrames) {
    throw errors.avatar('avatar_too_many_pixels', `The avatar has ${frames} frames, over the limit of ${limits.maxFrames}; use a shorter animation.`)
  }
  const pixels = (meta.width * frameHeight + SMALL_VARIANT_PIXELS) * frames
  if (pixels > limits.maxPixels) {
    throw errors.avatar('avatar_too_many_pixels', `The avatar is ${meta.width}x${frameHeight}${frames > 1 ? ` with ${frames} frames` : ''}: ${pixels} pixels to make with its 120x120 variant${frames > 1 ? 's' : ''}, over the limit of ${limits.maxPixels}; use a smaller image.`)
  }
  // Each output gets a pipeline of its own made from the bytes, not a clone of one: clone() deep-copies
  // the options, the input buffer included (~0.2 ms and 0.25 ms of CPU per image on a 2-core VM).
  const orientation = meta.orientation ?? 1
  const encode = ENCODERS[format]
  // An image that already fits in 520x400 once oriented is not resized for that variant, and libvips
  // then encodes exactly the original's bytes: the original is used, one encode fewer.
  const [width, height] = orientation >= 5 ? [frameHeight, meta.width] : [meta.width, frameHeight]
  const fitsLarge = width <= 520 && height <= 400
  const release = await admit?.(pixels)
  try {
    // An animation (an animated WebP; GIF has no EXIF) is turned frame by frame first: libvips turns
    // one image only, and holds an animation as one tall strip of its frames. The upright animation
    // is then the original, and the variants are made from it.
    const upright = frames > 1 && orientation > 1
      ? await uprightAnimation(bytes, { ...options, limitInputPixels: limits.maxPixels }, format, meta, frameHeight, orientation)
      : undefined
    const source = upright ?? bytes
    const oriented = () => {
      const s = sharp(source, { ...options, limitInputPixels: limits.maxPixels })
      return frames === 1 ? s.rotate() : s
    }
    const [original, small, large] = await Promise.all([
      upright === undefined ? encode(oriented()).toBuffer({ resolveWithObject: true }) : undefined,
      encode(oriented().resize(120, 120, { fit: 'cover', position: 'centre' })).toBuffer(),
      fitsLarge ? undefined : encode(oriented().resize(520, 400, { fit: 'inside', withoutEnlargement: true })).toBuffer()
    ])
    const stored = original?.data ?? source
    return {
      format,
      original: stored,
      width: original?.info.width ?? width,
      height: original === undefined ? height : original.info.pageHeight ?? original.info.height,
      variants: { '120x120': small, '520x400': large ?? stored }
    }
  } catch (err) {
    throw corrupt(err)
  } finally {
    release?.()
  }
}

/**
 * What EXIF orientation n asks of one image, in sharp's words (sharp mirrors before it turns,
 * whatever the order of the calls).
 */
const TURNS: Record<number, (s: Sharp) => Sharp> = {
  2: (s) => s.flop(),
  3: (s) => s.rotate(180),
  4: (s) => s.flip(),
  5: (s) => s.rotate(270).flop(),
  6: (s) => s.rotate(90),
  7: (s) => s.rotate(90).flop(),
  8: (s) => s.rotate(270)
}

/**
 * An animation with its EXIF orientation applied to every frame, encoded again in its format with
 * its timing and loop count, and no metadata: its frames decoded once (RGBA), each turned on its
 * own, put back together as the strip libvips holds an animation as.
 */
async function uprightAnimation (
  bytes: Buffer, options: SharpOptions, format: ImageFormat, meta: Metadata, frameHeight: number, orientation: number
): Promise<Buffer> {
  const turn = TURNS[orientation] ?? ((s: Sharp) => s)
  const { data, info } = await sharp(bytes, options).ensureAlpha().raw().toBuffer({ resolveWithObject: true })
  const frames = info.height / frameHeight
  const frameLength = info.width * frameHeight * 4
  const turned = await Promise.all(Array.from({ length: frames }, async (_, i) =>
    await turn(sharp(data.subarray(i * frameLength, (i + 1) * frameLength), { raw: { width: info.width, height: frameHeight, channels: 4 } }))
      .raw().toBuffer({ resolveWithObject: true })))
  const { width, height } = turned[0]!.info
  const strip = sharp(Buffer.concat(turned.map((t) => t.data)), { raw: { width, height: height * frames, channels: 4, pageHeight: height } })
  const timing = { loop: meta.loop ?? 0, ...(meta.delay === undefined ? {} : { delay: meta.delay }) }
  return await (format === 'gif' ? strip.gif(timing) : strip.webp({ quality: 90, ...timing })).toBuffer()
}

function corrupt (err: unknown) {
  return errors.avatar('avatar_corrupt', 'The avatar image is damaged or truncated and cannot be decoded; upload the file again or use another image.', err)
}
