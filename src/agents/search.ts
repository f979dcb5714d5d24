/**
 * The form of a name that `q` searches: Unicode-normalised (NFKC) and case-folded, so "ÉMILE",
 * "émile" and "e\u0301mile" all match "Émile". Stored beside the name so both SQLite (whose LIKE
 * folds ASCII only) and PostgreSQL search it the same way, with a plain LIKE.
 */
export function searchableName (name: string): string {
  return name.normalize('NFKC').toLowerCase().normalize('NFKC')
}

/** A LIKE pattern matching `q` anywhere, with LIKE's wildcards escaped (escape character `\`). */
export function containsPattern (q: string): string {
  return `%${searchableName(q).replace(/[\\%_]/g, (c) => `\\${c}`)}%`
}
