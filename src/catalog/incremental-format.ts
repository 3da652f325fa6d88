// Incremental format: block runs and CRCs of a block-level incremental file, and relation file paths.

import type { ManifestFileEntry } from './manifest.js';

/**
 * How a file of an incremental backup is stored when only some of its blocks are (see
 * docs/catalog-format.md, "Incremental backups"). The archive entry's content (its `size` and
 * `checksum` in the manifest) is the listed blocks, one after the other, in `runs` order; every
 * other block of the file comes from the parent chain.
 */
export interface IncrementalFileInfo {
  /** Length in bytes of the restored file (restore truncates or extends the parent's file to it). */
  length: number;
  /** Stored blocks as runs `[first block, count]`, ascending; empty for an unchanged file. */
  runs: Array<[number, number]>;
  /** CRC-32C of each stored block, 8 hex digits each, concatenated in stored order. */
  crcs: string;
}

/** A manifest file entry of an incremental backup: whole (no `incr`) or block-level. */
export interface IncrementalManifestEntry extends ManifestFileEntry {
  incr?: IncrementalFileInfo;
}

/** Number of blocks listed in runs. */
export function runBlocks(runs: ReadonlyArray<readonly [number, number]>): number {
  let n = 0;
  for (const [, c] of runs) n += c;
  return n;
}

/** Turns an ascending, duplicate-free block list into runs of consecutive blocks. */
export function toRuns(blocks: ArrayLike<number>): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  for (let i = 0; i < blocks.length; i++) {
    const b = blocks[i]!;
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === b) last[1]++;
    else runs.push([b, 1]);
  }
  return runs;
}

/** Key of a file in a backup: archive (`base` or tablespace OID) and path. */
export function fileKey(archive: string, path: string): string {
  return `${archive}\0${path}`;
}

// Relation file paths are a fact of PostgreSQL's data directory (postgres/, a layer down, needs them);
// re-exported for the catalog's users.
export { parseRelationPath, type RelationFile } from '../postgres/relation-file.js';
