import type { Config } from '../config/index.js'
import { openDatabase } from '../db/index.js'
import { migrateToLatest } from '../db/migrate.js'
import { scheduleLeftovers, takeInventory, type FileInventory } from '../avatars/inventory.js'
import { createBlobStore } from '../storage/index.js'

const count = (n: number, one: string, many = `${one}s`): string => `${n.toLocaleString('en-US')} ${n === 1 ? one : many}`

/**
 * `agentry files check` and `agentry files sweep`: the avatar store against the avatar records.
 * Returns the exit code: 1 when avatars refer to missing files, or (check only) when leftovers wait.
 */
export async function filesCommand (config: Config, sweep: boolean): Promise<number> {
  const database = await openDatabase(config.database)
  const store = await createBlobStore(config)
  try {
    await migrateToLatest(database.db, database.dialect)
    const grace = config.avatarGcGraceSeconds
    const inventory = await takeInventory(database.db, store, { nowMs: Date.now(), recentMs: grace * 1000 })
    console.log(report(inventory, grace, sweep).join('\n'))
    const { leftovers } = inventory
    if (sweep && leftovers.images.length > 0) {
      const scheduled = await scheduleLeftovers(database.transact, leftovers.images, Math.floor(Date.now() / 1000) + grace)
      console.log(`Handed ${count(scheduled, 'image')} to the file collector: a running server deletes their files after ${count(grace, 'second')} (AVATAR_GC_GRACE_SECONDS), unless an avatar refers to them by then.`)
    }
    return inventory.incomplete.count > 0 || (!sweep && leftovers.images.length > 0) ? 1 : 0
  } finally {
    store.close?.()
    await database.close()
  }
}

function report (inv: FileInventory, grace: number, sweep: boolean): string[] {
  const lines = [`Avatar files in ${inv.location}: ${count(inv.files, 'file')}, ${count(inv.images, 'image')}.`]
  lines.push(`  ${count(inv.whole, 'image')} that avatars refer to, each with its three files.`)
  if (inv.collecting > 0) lines.push(`  ${count(inv.collecting, 'image')} that nothing refers to any more, on the file collector's schedule.`)
  if (inv.recent > 0) lines.push(`  ${count(inv.recent, 'image')} too recent to judge (written in the last ${count(grace, 'second')}, or while this ran).`)
  const { leftovers } = inv
  if (leftovers.images.length > 0) {
    lines.push(`  ${count(leftovers.images.length, 'image')} (${count(leftovers.files, 'file')}) that nothing refers to and nothing will delete: left by writes that never finished (a process stopped between storing the files and recording the avatar).`)
    for (const image of leftovers.images.slice(0, 20)) lines.push(`    ${image.path}`)
    if (leftovers.images.length > 20) lines.push(`    ... and ${count(leftovers.images.length - 20, 'more', 'more')}`)
    if (!sweep) lines.push('    `agentry files sweep` hands them to the file collector.')
  }
  const { incomplete } = inv
  if (incomplete.count > 0) {
    lines.push(`  ${count(incomplete.count, 'image')} that avatars refer to with files missing (those avatars' URLs answer 404; set the avatars again to store them anew):`)
    for (const image of incomplete.examples) lines.push(`    ${image.path} (${count(image.avatars, 'avatar')}): missing ${image.missing.join(', ')}`)
    if (incomplete.count > incomplete.examples.length) lines.push(`    ... and ${count(incomplete.count - incomplete.examples.length, 'more', 'more')}`)
  }
  if (inv.other.count > 0) {
    lines.push(`  ${count(inv.other.count, 'file')} that ${inv.other.count === 1 ? 'is not an avatar file' : 'are not avatar files'} (left alone):`)
    for (const key of inv.other.examples) lines.push(`    ${key}`)
    if (inv.other.count > inv.other.examples.length) lines.push(`    ... and ${count(inv.other.count - inv.other.examples.length, 'more', 'more')}`)
  }
  if (incomplete.count === 0 && leftovers.images.length === 0) lines.push('No problems found.')
  return lines
}
