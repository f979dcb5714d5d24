/**
 * The form of a name that `q` searches: Unicode-normalised (NFKC) and case-folded, so "ÉMILE",
 * "émile" and "e\u0301mile" all match "Émile". Stored beside the name so both SQLite (whose LIKE
 * folds ASCII only) and PostgreSQL search it the same way, with a plain LIKE.
 * toLowerCase() is not a full case fold: final sigma and sharp s are folded here as Unicode's
 * case folding does (ς → σ, ß and ẞ → ss), so "ΟΔΥΣ" finds "Οδυσσέας" and "STRASSE" finds "Straße".
 */
export function searchableName (name: string): string {
  return name.normalize('NFKC').toLowerCase().replace(/ς/g, 'σ').replace(/[ßẞ]/g, 'ss').normalize('NFKC')
}

/** A LIKE pattern matching `q` anywhere, with LIKE's wildcards escaped (escape character `\`). */
export function containsPattern (q: string): string {
  return `%${searchableName(q).replace(/[\\%_]/g, (c) => `\\${c}`)}%`
}
