import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { sha256, sha256Streamed } from '../src/util/sha256.js'

// Node before 20.12 has no crypto.hash: there sha256 is sha256Streamed. Both must give the same
// token hashes and ETags, or tokens stored by one Node would not be found by another.
describe('sha256 on every Node 20', () => {
  it('the one-shot and the Hash-object forms agree', () => {
    for (const data of ['', 'agt_0123456789', '{"name":"Émile 🎧"}', 'x'.repeat(100_000)]) {
      assert.equal(sha256(data, 'hex'), sha256Streamed(data, 'hex'))
      assert.equal(sha256(data, 'base64url'), sha256Streamed(data, 'base64url'))
    }
    assert.equal(sha256('abc', 'hex'), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad')
  })
})
