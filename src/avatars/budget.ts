import { Semaphore } from 'async-mutex'
import { AppError } from '../errors/index.js'

/** Counted in steps of this many pixels (async-mutex walks its waiters once per unit of room). */
const UNIT = 1_000_000

export interface ProcessingCounts {
  /** Pixels of the images being processed now. */
  pixels: number
  /** Images waiting for room. */
  queued: number
}

/**
 * How many decoded pixels this instance works on at once (AVATAR_PROCESSING_PIXELS). Turning a
 * large JPEG by a quarter holds the whole image in memory several times over (a 40-megapixel one
 * took ~370 MB), and every request may bring one: eight at once took the process past 1.5 GB. An
 * image waits here, after its header was read and before any pixel is decoded, until the images
 * in progress leave room for it; one larger than the whole budget goes alone. Small avatars (a
 * 400x400 one is 0.16 megapixels, counted as one step) are not held back by one another. In turn:
 * a large image at the head of the queue is not overtaken by smaller ones for ever.
 */
export class ProcessingBudget {
  private readonly semaphore: Semaphore
  private readonly units: number
  private inProgress = 0
  /** Requests waiting for room (the metric). */
  private waiting = 0
  /** Places asked of the semaphore and not yet given: those of requests that gave up too, until their turn. */
  private asked = 0

  /** waitMs: how long an image may wait for room (AVATAR_TIMEOUT_MS); then its request is a 503. */
  constructor (pixels: number, private readonly waitMs: number) {
    this.units = Math.max(1, Math.floor(pixels / UNIT))
    this.semaphore = new Semaphore(this.units)
  }

  /**
   * Waits for room for an image of this many pixels; the release, to call once it is done. Throws
   * 503 service_unavailable once it has waited waitMs: a request must not wait without end (nor
   * outlast its Idempotency-Key's claim, see idempotencyClaimSeconds). Its place, when its turn
   * comes, is given back at once.
   */
  async admit (pixels: number): Promise<() => void> {
    const weight = Math.min(this.units, Math.max(1, Math.ceil(pixels / UNIT)))
    let release: () => void
    // Room now, and nothing queued ahead (every place is asked for here, counted): no timer to set.
    // The usual case, on every ingest: a timer and its error made for each one (async-mutex's
    // withTimeout, tried first) cost ~15 MB of peak RSS and ~0.5 ms of CPU per ingest in the bench.
    if (this.asked === 0 && this.semaphore.getValue() >= weight) {
      [, release] = await this.semaphore.acquire(weight)
    } else {
      this.waiting++
      try {
        release = await this.acquireWithin(weight)
      } finally {
        this.waiting--
      }
    }
    this.inProgress += pixels
    let released = false
    return () => {
      if (released) return
      released = true
      this.inProgress -= pixels
      release()
    }
  }

  private async acquireWithin (weight: number): Promise<() => void> {
    this.asked++
    const ticket = this.semaphore.acquire(weight).finally(() => { this.asked-- })
    let timer: NodeJS.Timeout | undefined
    const gaveUp = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => {
        reject(new AppError('service_unavailable', `Too many large images are being processed on this instance right now (AVATAR_PROCESSING_PIXELS); this one waited ${this.waitMs} ms for its turn. Retry the request in a moment (a POST with the same Idempotency-Key, if it had one).`))
      }, this.waitMs)
    })
    try {
      const [, release] = await Promise.race([ticket, gaveUp])
      return release
    } catch (err) {
      // Its turn may still come: its place is given back then, at once.
      void ticket.then(([, release]) => { release() })
      throw err
    } finally {
      clearTimeout(timer)
    }
  }

  counts (): ProcessingCounts {
    return { pixels: this.inProgress, queued: this.waiting }
  }
}
