import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { describe, it } from 'node:test'
import semver from 'semver'

// What `npm ci` installs from the lock file must run on every Node that package.json's `engines`
// admits: a dependency declaring a newer Node (content-disposition 3 and cookie 2 declare Node 22)
// may use what Node 20 lacks, and npm warns EBADENGINE on every install.
interface LockedPackage {
  version?: string
  dev?: boolean
  engines?: { node?: string } | string[]
}

const read = (file: string): unknown => JSON.parse(readFileSync(new URL(`../${file}`, import.meta.url), 'utf8'))
const manifest = read('package.json') as { engines: { node: string } }
const lock = read('package-lock.json') as { packages: Record<string, LockedPackage> }

function nodeRange(pkg: LockedPackage): string | undefined {
  return Array.isArray(pkg.engines) ? undefined : pkg.engines?.node
}

describe('dependencies and Node versions', () => {
  it('every package the service runs on admits the oldest Node that engines admits', () => {
    const oldest = semver.minVersion(manifest.engines.node)
    assert.ok(oldest, manifest.engines.node)
    assert.equal(oldest.major, 20)
    const refusing = Object.entries(lock.packages)
      .filter(([path, pkg]) => path !== '' && pkg.dev !== true)
      .filter(([, pkg]) => {
        const range = nodeRange(pkg)
        return range !== undefined && !semver.satisfies(oldest, range)
      })
      .map(([path, pkg]) => `${path}@${pkg.version ?? '?'} wants node ${nodeRange(pkg) ?? ''}`)
    assert.deepEqual(refusing, [])
  })

  it('every package, development ones too, admits the Node running the tests', () => {
    const refusing = Object.entries(lock.packages)
      .filter(([path, pkg]) => {
        const range = nodeRange(pkg)
        return path !== '' && range !== undefined && !semver.satisfies(process.version, range)
      })
      .map(([path, pkg]) => `${path}@${pkg.version ?? '?'} wants node ${nodeRange(pkg) ?? ''}`)
    assert.deepEqual(refusing, [])
  })
})
