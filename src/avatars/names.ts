let lastMicros = 0

/**
 * A 13-hex-digit name ordered by time, like the seed's `5d1dbd5e921f6`:
 * 8 hex digits of unix seconds then 5 of microseconds, strictly increasing within a process.
 */
export function timeOrderedName (nowMicros = Math.floor((performance.timeOrigin + performance.now()) * 1000)): string {
  const micros = Math.max(nowMicros, lastMicros + 1)
  lastMicros = micros
  const seconds = Math.floor(micros / 1_000_000)
  return seconds.toString(16).padStart(8, '0') + (micros % 1_000_000).toString(16).padStart(5, '0')
}
