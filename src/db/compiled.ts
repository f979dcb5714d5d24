import { CompiledQuery, type Compilable } from 'kysely'
import type { DbOrTrx } from './index.js'
import { setBounded } from '../util/bounded-map.js'

/** Shapes compiled at most (the hot writes have a handful each). */
const SHAPES_KEPT = 256

/** A statement's SQL, and which of the caller's values each of its parameters is. */
interface Shape {
  sql: string
  slots: number[]
}

/**
 * Shapes by the database they were compiled for, keyed by its dialect adapter: one object for a
 * Kysely instance and every transaction made from it (SQLite makes a new transaction object per
 * commit), and another for another database, whose SQL may write parameters otherwise (`?`, `$1`).
 */
const shapesByDatabase = new WeakMap<object, Map<string, Shape>>()

function shapesOf (db: DbOrTrx): Map<string, Shape> {
  // Read as Kysely's own Migrator reads it.
  const adapter = db.getExecutor().adapter
  let shapes = shapesByDatabase.get(adapter)
  if (shapes === undefined) {
    shapes = new Map()
    shapesByDatabase.set(adapter, shapes)
  }
  return shapes
}

/**
 * A statement whose SQL depends only on `key`, compiled once per key and database, then run with each
 * call's values. Kysely builds and compiles every statement afresh: for the statements of a status
 * change that is ~14 µs of CPU on a 2-core VM, about a tenth of the whole write on SQLite, which
 * runs each of them in a few µs.
 *
 * `build` is called once per key, with stand-ins: `v(i)` stands for `values[i]`. Every parameter of
 * the statement it builds must be one of them (any other value would be baked into the key's SQL:
 * that throws), and everything else about it must follow from the key alone.
 */
export function compiledOnce<R> (db: DbOrTrx, key: string, values: readonly unknown[], build: (v: (i: number) => never) => Compilable<R>): CompiledQuery<R> {
  const shapes = shapesOf(db)
  let shape = shapes.get(key)
  if (shape === undefined) {
    const standIns = values.map((_, i) => `\u0000agentry-parameter-${i}\u0000`)
    const compiled = build((i) => standIns[i] as never).compile()
    const slots = compiled.parameters.map((p) => standIns.indexOf(p as string))
    if (slots.includes(-1)) throw new Error(`compiledOnce(${key}): a parameter of the statement is not one of its values`)
    shape = { sql: compiled.sql, slots }
    setBounded(shapes, key, shape, SHAPES_KEPT)
  }
  return CompiledQuery.raw(shape.sql, shape.slots.map((i) => values[i]))
}

/**
 * compiledOnce for an insert of one row: keyed by `name` and the columns `row` gives (those left
 * undefined are left out, as Kysely leaves them out). `build` gets the row with stand-ins.
 */
export function compiledInsert<T extends object, R> (db: DbOrTrx, name: string, row: T, build: (row: T) => Compilable<R>): CompiledQuery<R> {
  const given = row as Record<string, unknown>
  const columns = Object.keys(given).filter((c) => given[c] !== undefined)
  return compiledOnce(db, `insert:${name}:${columns.join(',')}`, columns.map((c) => given[c]), (v) =>
    build(Object.fromEntries(columns.map((c, i) => [c, v(i)])) as T))
}
