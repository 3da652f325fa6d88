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

const RELATION_FILE = /^(\d+)(?:_(fsm|vm|init))?(?:\.(\d+))?$/;
const FORKS: Record<string, number> = { '': 0, fsm: 1, vm: 2, init: 3 };
/** pg_default's and pg_global's OIDs (DEFAULTTABLESPACE_OID, GLOBALTABLESPACE_OID). */
const DEFAULT_TABLESPACE = 1663;
const GLOBAL_TABLESPACE = 1664;

/** A relation segment file recognised from its path. */
export interface RelationFile {
  spcOid: number;
  dbOid: number;
  relNumber: number;
  /** 0 main, 1 fsm, 2 vm, 3 init. */
  fork: number;
  /** Segment number (the `.N` suffix; 0 without). */
  segment: number;
}

/**
 * Recognises a relation file of the data directory (archive `base`: `base/<db>/<rel>[_fork][.seg]`,
 * `global/<rel>...`) or of a tablespace (archive = OID: `PG_<ver>_<cat>/<db>/<rel>...`). Anything
 * else (pg_xact, pg_control, pg_filenode.map, PG_VERSION, temporary relations `t3_...`) is not a
 * relation file and is always copied whole.
 */
export function parseRelationPath(archive: string, path: string): RelationFile | undefined {
  const parts = path.split('/');
  let spcOid: number;
  let dbOid: number;
  let name: string;
  if (archive === 'base') {
    if (parts.length === 3 && parts[0] === 'base' && /^\d+$/.test(parts[1]!)) {
      spcOid = DEFAULT_TABLESPACE;
      dbOid = Number(parts[1]);
      name = parts[2]!;
    } else if (parts.length === 2 && parts[0] === 'global') {
      spcOid = GLOBAL_TABLESPACE;
      dbOid = 0;
      name = parts[1]!;
    } else {
      return undefined;
    }
  } else {
    if (!/^\d+$/.test(archive) || parts.length !== 3 || !parts[0]!.startsWith('PG_') || !/^\d+$/.test(parts[1]!))
      return undefined;
    spcOid = Number(archive);
    dbOid = Number(parts[1]);
    name = parts[2]!;
  }
  const m = RELATION_FILE.exec(name);
  if (!m) return undefined;
  return {
    spcOid,
    dbOid,
    relNumber: Number(m[1]),
    fork: FORKS[m[2] ?? '']!,
    segment: m[3] === undefined ? 0 : Number(m[3]),
  };
}
