/**
 * Sets key to value in a map kept to at most `max` entries: when it is full, the entry set longest
 * ago goes first (a Map keeps insertion order; setting a key again counts as setting it now).
 */
export function setBounded<K, V> (map: Map<K, V>, key: K, value: V, max: number): void {
  map.delete(key)
  if (map.size >= max) {
    const oldest = map.keys().next()
    if (oldest.done !== true) map.delete(oldest.value)
  }
  map.set(key, value)
}
