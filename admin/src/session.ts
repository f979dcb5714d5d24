/**
 * The token lives in sessionStorage only: per tab, gone when the tab closes, never in a URL, a
 * cookie or localStorage.
 */
const KEY = 'agentry.admin.token'

export function savedToken (): string | undefined {
  try {
    const token = sessionStorage.getItem(KEY)
    return token === null || token === '' ? undefined : token
  } catch {
    return undefined // storage disabled: the person signs in again on each load
  }
}

export function saveToken (token: string): void {
  try { sessionStorage.setItem(KEY, token) } catch { /* storage disabled: kept in memory only */ }
}

export function forgetToken (): void {
  try { sessionStorage.removeItem(KEY) } catch { /* nothing stored */ }
}
