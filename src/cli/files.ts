import type { Config } from '../config/index.js'
import { openDatabase } from '../db/index.js'
import { migrateToLatest } from '../db/migrate.js'
import { mendVariants, scheduleLeftovers, takeInventory, type FileInventory, type Mending } from '../avatars/inventory.js'
import { avatarKeys } from '../storage/blob-store.js'
import { createBlobStore } from '../storage/index.js'

const count = (n: number, one: string, many = `${one}s`): string => `${n.toLocaleString('en-US')} ${n === 1 ? one : many}`

/**
 * `agentry files check` and `agentry files sweep`: the avatar store against the avatar records.
 * Sweep also hands leftovers to the file collector and makes missing variants again from their
 * originals. Returns the exit code: 1 when avatars refer to missing files (sweep: that it could
 * not make again), or (check only) when leftovers wait.
 */
export async function filesCommand (config: Config, sweep: boolean): Promise<number> {
  const database = await openDatabase(config.database)
  const store = await createBlobStore(config)
  try {
    await migrateToLatest(database.db, database.dialect)
    const grace = config.avatarGcGraceSeconds
    const inventory = await takeInventory(database.db, store, { nowMs: Date.now(), recentMs: grace * 1000 })
    console.log(report(inventory, grace, sweep).join('\n'))
    const { leftovers, incomplete } = inventory
    if (!sweep) return incomplete.length > 0 || leftovers.images.length > 0 ? 1 : 0
    const eligibleAt = () => Math.floor(Date.now() / 1000) + grace
    if (leftovers.images.length > 0) {
      const scheduled = await scheduleLeftovers(database.transact, leftovers.images, eligibleAt())
      console.log(`Handed ${count(scheduled, 'image')} to the file collector: a running server deletes their files after ${count(grace, 'second')} (AVATAR_GC_GRACE_SECONDS), unless an avatar refers to them by then.`)
    }
    if (incomplete.length === 0) return 0
    const mending = await mendVariants(store, incomplete, config.avatar)
    // An image whose last avatar went while it was mended may already have been collected: its new
    // files would then be leftovers. Such an image goes on the collector's schedule like one.
    const orphaned = await scheduleLeftovers(database.transact, mending.mended, eligibleAt())
    console.log(mendingReport(mending, orphaned).join('\n'))
    return mending.unmended.length > 0 ? 1 : 0
  } finally {
    store.close?.()
    await database.close()
  }
}

/** Lines shown at most for one finding. */
const SHOWN = 20

/** The first SHOWN of `items`, a line each, then how many more there are of `total`. */
function listed<T> (items: readonly T[], line: (item: T) => string, total = items.length): string[] {
  const shown = items.slice(0, SHOWN)
  const lines = shown.map((item) => `    ${line(item)}`)
  if (total > shown.length) lines.push(`    ... and ${count(total - shown.length, 'more', 'more')}`)
  return lines
}

function report (inv: FileInventory, grace: number, sweep: boolean): string[] {
  const lines = [`Avatar files in ${inv.location}: ${count(inv.files, 'file')}, ${count(inv.images, 'image')}.`]
  lines.push(`  ${count(inv.whole, 'image')} that avatars refer to, each with its three files.`)
  if (inv.collecting > 0) lines.push(`  ${count(inv.collecting, 'image')} that nothing refers to any more, on the file collector's schedule.`)
  if (inv.recent > 0) lines.push(`  ${count(inv.recent, 'image')} too recent to judge (written in the last ${count(grace, 'second')}, or while this ran).`)
  const { leftovers } = inv
  if (leftovers.images.length > 0) {
    lines.push(`  ${count(leftovers.images.length, 'image')} (${count(leftovers.files, 'file')}) that nothing refers to and nothing will delete: left by writes that never finished (a process stopped between storing the files and recording the avatar).`)
    lines.push(...listed(leftovers.images, (image) => image.path))
    if (!sweep) lines.push('    `agentry files sweep` hands them to the file collector.')
  }
  const { incomplete } = inv
  if (incomplete.length > 0) {
    lines.push(`  ${count(incomplete.length, 'image')} that avatars refer to with files missing (those avatars' URLs answer 404):`)
    lines.push(...listed(incomplete, (image) => {
      const keys = avatarKeys(image.path)
      return `${image.path} (${count(image.avatars, 'avatar')}): missing ${image.missing.map((k) => keys[k]).join(', ')}`
    }))
    if (!sweep) lines.push('    `agentry files sweep` makes missing sizes again from the original where it is there; where the original is missing, set the avatars again.')
  }
  if (inv.other.count > 0) {
    lines.push(`  ${count(inv.other.count, 'file')} that ${inv.other.count === 1 ? 'is not an avatar file' : 'are not avatar files'} (left alone):`)
    lines.push(...listed(inv.other.examples, (key) => key, inv.other.count))
  }
  if (incomplete.length === 0 && leftovers.images.length === 0) lines.push('No problems found.')
  return lines
}

function mendingReport (m: Mending, orphaned: number): string[] {
  const lines: string[] = []
  if (m.mended.length > 0) lines.push(`Made ${count(m.files, 'missing file')} of ${count(m.mended.length, 'image')} again from ${m.mended.length === 1 ? 'its original' : 'their originals'}: those avatars' URLs answer again.`)
  if (orphaned > 0) lines.push(`  ${count(orphaned, 'image')} of them lost ${orphaned === 1 ? 'its' : 'their'} last avatar meanwhile: handed to the file collector.`)
  if (m.unmended.length > 0) {
    lines.push(`Could not mend ${count(m.unmended.length, 'image')}; set ${m.unmended.length === 1 ? 'its avatars' : 'their avatars'} again to store the files anew:`)
    lines.push(...listed(m.unmended, ({ image, reason }) => `${image.path} (${count(image.avatars, 'avatar')}): ${reason}`))
  }
  return lines
}
