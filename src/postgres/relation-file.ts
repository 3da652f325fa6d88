// Relation files: which files of a data directory or tablespace are relation segments, of which fork and segment.

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
 * relation file (an incremental backup copies it whole; its pages carry no data checksum).
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
