// Change set: the MBMs of an LSN range merged into what an incremental backup must copy.

import { readdirSync } from 'node:fs';
import { BartError, errorMessage } from '../util/errors.js';
import { log } from '../util/log.js';
import { formatLsn, type Lsn } from '../util/lsn.js';
import { DEFAULT_WAL_SEGMENT_SIZE } from '../postgres/constants.js';
import { segmentName } from '../wal/segment-name.js';
import { LONG_PAGE_HEADER_SIZE } from '../wal/constants.js';
import { readTimelineHistory, timelineOfSegment, type TimelineSpan } from '../wal/timeline-history.js';
import { joinKey, type RepositoryStorage } from '../storage/storage.js';
import {
  findArchivedSegment,
  readArchivedMbm,
  readArchivedTimelineHistory,
  scanArchiveStorage,
  type ScanArchive,
} from './archive-source.js';
import { parseMbmFileName } from './mbm-name.js';
import { forkKey, type ForkChanges, type MbmEvent, type ModifiedBlockMap } from './modified-block-map.js';
import { scanArchivedSegment } from './scan-wal-file.js';

/** What to merge: the WAL records starting in [startLsn, endLsn) on `timeline`'s history. */
export interface ChangeSetRequest {
  timeline: number;
  startLsn: Lsn;
  endLsn: Lsn;
  segmentSize?: number;
}

/** A database directory (tablespace, database OID) whose files must be copied whole. */
export interface DatabaseDir {
  spcOid: number;
  dbOid: number;
}

/** The merged changes of an LSN range: what an incremental backup must copy. */
export interface ChangeSet {
  timeline: number;
  startLsn: Lsn;
  endLsn: Lsn;
  /** Per fork: union of modified blocks, lowest limit. Key: `spc/db/rel/fork` ({@link forkKey}). */
  relations: Map<string, ForkChanges>;
  /** Databases created in the range (either strategy): copy their directories in full. */
  createdDatabases: DatabaseDir[];
  droppedDatabases: DatabaseDir[];
  createdTablespaces: number[];
  droppedTablespaces: number[];
  /**
   * The server ran with wal_level = minimal at some point of the range: bulk operations left
   * no block references, so an incremental backup over it would be wrong (take a full one).
   */
  walLevelMinimal: boolean;
  /** full_page_writes was turned off in the range (torn pages cannot be repaired by replay). */
  fullPageWritesOff: boolean;
  /** Every event of the range, in LSN order. */
  events: MbmEvent[];
  /** Segment names in the range without an MBM (scan them, or refuse naming the first). */
  missingSegments: string[];
  /** MBM files merged. */
  mbmFiles: string[];
  /** System identifier the MBMs were made for (undefined when none was read). */
  systemId?: bigint;
}

/**
 * True when `block` of the fork must be taken from the newer backup: it was modified in the
 * range, or lies at or past the fork's limit, or its whole database/tablespace is new.
 */
export function isBlockModified(
  cs: ChangeSet,
  spcOid: number,
  dbOid: number,
  relNumber: number,
  fork: number,
  block: number,
): boolean {
  if (cs.createdDatabases.some((d) => d.dbOid === dbOid && d.spcOid === spcOid)) return true;
  if (cs.createdTablespaces.includes(spcOid)) return true;
  const f = cs.relations.get(forkKey(spcOid, dbOid, relNumber, fork));
  if (!f) return false;
  if (f.limit !== null && block >= f.limit) return true;
  // Binary search in the sorted block list.
  let lo = 0;
  let hi = f.blocks.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const v = f.blocks[mid]!;
    if (v === block) return true;
    if (v < block) lo = mid + 1;
    else hi = mid - 1;
  }
  return false;
}

/**
 * Lists the MBM files of a POSIX archive directory: key `timeline:endLsn` → file name. Only
 * incremental-backup.ts's --check plan still calls it; {@link indexArchivedMbms} is the storage one.
 * POSIX shim: migrate
 */
export function indexMbmFiles(archivePath: string): Map<string, string> {
  const index = new Map<string, string>();
  let names: string[];
  try {
    names = readdirSync(archivePath);
  } catch (err) {
    throw new BartError(`cannot read the WAL archive directory "${archivePath}": ${(err as Error).message}`);
  }
  for (const n of names) {
    const p = parseMbmFileName(n);
    if (p) index.set(`${p.timeline}:${p.endLsn}`, n);
  }
  return index;
}

/** Lists the MBMs of an archive storage: key `timeline:endLsn` → MBM key. */
export async function indexArchivedMbms(storage: RepositoryStorage): Promise<Map<string, string>> {
  const index = new Map<string, string>();
  try {
    for await (const page of storage.list('', { shallow: true }))
      for (const o of page.objects) {
        const p = parseMbmFileName(o.key);
        if (p) index.set(`${p.timeline}:${p.endLsn}`, o.key);
      }
  } catch (err) {
    throw new BartError(`cannot list the WAL archive ${storage.location}: ${errorMessage(err)}`);
  }
  return index;
}

/**
 * Most segments one LSN range may span: 1,000,000 segments are 16 TB of WAL at the default size,
 * far beyond any real interval between two backups, while a range such as 0/0..FFFFFFFF/0 (2^40
 * segments) would otherwise have every segment name built (minutes of CPU, gigabytes of memory).
 */
export const MAX_RANGE_SEGMENTS = 1_000_000;

/** True for a WAL segment size PostgreSQL allows (initdb --wal-segsize): a power of two, 1 MB to 1 GB. */
export function isWalSegmentSize(size: number): boolean {
  return Number.isInteger(size) && size >= 1024 * 1024 && size <= 1024 * 1024 * 1024 && (size & (size - 1)) === 0;
}

/**
 * Checks an LSN range before any work is done on it: a valid segment size and at most
 * {@link MAX_RANGE_SEGMENTS} segments (an empty range, end <= start, is fine: it has none).
 * Throws BartError naming the range otherwise.
 */
export function checkRangeBounds(req: ChangeSetRequest): void {
  const segSize = req.segmentSize ?? DEFAULT_WAL_SEGMENT_SIZE;
  if (!isWalSegmentSize(segSize)) {
    throw new BartError(`invalid WAL segment size ${segSize}: expected a power of two from 1 MB to 1 GB`);
  }
  if (req.endLsn <= req.startLsn) return;
  const range = `${formatLsn(req.startLsn)}..${formatLsn(req.endLsn)}`;
  const segments = req.endLsn / BigInt(segSize) - req.startLsn / BigInt(segSize) + 1n;
  if (segments > BigInt(MAX_RANGE_SEGMENTS)) {
    throw new BartError(
      `LSN range ${range} spans ${segments} WAL segments, more than the ${MAX_RANGE_SEGMENTS} one request may cover`,
    );
  }
}

/** A segment of a range: its timeline, number and name. */
export interface RangeSegment {
  timeline: number;
  segNo: bigint;
  name: string;
}

/** The segments of a range on a timeline history (see {@link segmentsOfRange}). */
function rangeOnHistory(history: TimelineSpan[], req: ChangeSetRequest): RangeSegment[] {
  const segSize = req.segmentSize ?? DEFAULT_WAL_SEGMENT_SIZE;
  const first = req.startLsn / BigInt(segSize);
  let last = (req.endLsn - 1n) / BigInt(segSize);
  // A backup's start LSN usually sits right after the long page header of a fresh segment
  // (pg_backup_start switches segments first): no record starts in that segment before it, so
  // it is not needed (and is not archived yet when the incremental backup starts).
  if (req.endLsn - last * BigInt(segSize) <= BigInt(LONG_PAGE_HEADER_SIZE) && last > first) last--;
  const out: RangeSegment[] = [];
  for (let s = first; s <= last; s++) {
    const tli = timelineOfSegment(history, s, segSize);
    out.push({ timeline: tli, segNo: s, name: segmentName(tli, s, segSize) });
  }
  return out;
}

/**
 * The WAL segments (timeline, name) whose records start in [startLsn, endLsn), the timeline
 * history read from a POSIX archive directory. Throws BartError for a range
 * {@link checkRangeBounds} refuses, so no caller builds an unbounded list. Only
 * incremental-backup.ts's --check plan still calls it; {@link archivedSegmentsOfRange} is the
 * storage one. POSIX shim: migrate
 */
export function segmentsOfRange(archivePath: string, req: ChangeSetRequest): RangeSegment[] {
  checkRangeBounds(req);
  if (req.endLsn <= req.startLsn) return [];
  return rangeOnHistory(readTimelineHistory(archivePath, req.timeline), req);
}

/** {@link segmentsOfRange} with the timeline history read through the archive storage. */
export async function archivedSegmentsOfRange(
  storage: RepositoryStorage,
  req: ChangeSetRequest,
): Promise<RangeSegment[]> {
  checkRangeBounds(req);
  if (req.endLsn <= req.startLsn) return [];
  return rangeOnHistory(await readArchivedTimelineHistory(storage, req.timeline), req);
}

/**
 * Reads an MBM; when it is damaged (bit rot, a disk error: pgbart itself only ever stores complete
 * MBMs) and its WAL segment is still archived, the segment is scanned again and the rebuilt MBM
 * replaces the damaged one. Without the WAL the damage is an error: nothing can vouch for that
 * segment's changes.
 */
async function readMbmOrRescan(
  storage: RepositoryStorage,
  key: string,
  segment: string,
  segmentSize: number,
): Promise<ModifiedBlockMap> {
  try {
    return await readArchivedMbm(storage, key, segmentSize);
  } catch (err) {
    const wal = await findArchivedSegment(storage, segment);
    if (!wal)
      throw new BartError(
        `${errorMessage(err)}; its WAL segment ${segment} is no longer archived, so it cannot be rebuilt: take a new full backup`,
      );
    log.warning(`${errorMessage(err)}; scanning WAL segment ${segment} again to rebuild it`);
    const r = await scanArchivedSegment(storage, wal);
    if (r.status !== 'written')
      throw new BartError(
        `${errorMessage(err)}; rescanning ${segment} needs WAL segment ${r.nextSegment}, which is not archived`,
      );
    if (r.mbmPath !== key) await storage.remove(key).catch(() => undefined);
    return r.map;
  }
}

/**
 * Merges the MBMs covering the WAL records that start in [startLsn, endLsn) on the given
 * timeline's history into one change set. Segments without an MBM are reported in
 * `missingSegments` (never silently skipped): the caller scans them or refuses the backup.
 */
export async function loadChangeSet(archive: ScanArchive, req: ChangeSetRequest): Promise<ChangeSet> {
  const storage = scanArchiveStorage(archive);
  const segSize = req.segmentSize ?? DEFAULT_WAL_SEGMENT_SIZE;
  checkRangeBounds(req);
  const index = await indexArchivedMbms(storage);
  const cs: ChangeSet = {
    timeline: req.timeline,
    startLsn: req.startLsn,
    endLsn: req.endLsn,
    relations: new Map(),
    createdDatabases: [],
    droppedDatabases: [],
    createdTablespaces: [],
    droppedTablespaces: [],
    walLevelMinimal: false,
    fullPageWritesOff: false,
    events: [],
    missingSegments: [],
    mbmFiles: [],
  };
  const blockSets = new Map<string, Set<number>>();
  for (const seg of await archivedSegmentsOfRange(storage, req)) {
    const segEnd = (seg.segNo + 1n) * BigInt(segSize);
    const file = index.get(`${seg.timeline}:${segEnd}`);
    if (!file) {
      cs.missingSegments.push(seg.name);
      continue;
    }
    const path = joinKey(storage.location, file);
    const m = await readMbmOrRescan(storage, file, seg.name, segSize);
    if (m.segmentSize !== segSize)
      throw new BartError(`MBM file "${path}" was made for WAL segments of ${m.segmentSize} bytes, not ${segSize}`);
    if (cs.systemId === undefined) cs.systemId = m.systemId;
    else if (m.systemId !== cs.systemId)
      throw new BartError(
        `MBM file "${path}" belongs to another cluster (system identifier ${m.systemId}, expected ${cs.systemId})`,
      );
    cs.mbmFiles.push(path);
    for (const r of m.relations) {
      const key = forkKey(r.spcOid, r.dbOid, r.relNumber, r.fork);
      let acc = cs.relations.get(key);
      if (!acc) {
        acc = {
          spcOid: r.spcOid,
          dbOid: r.dbOid,
          relNumber: r.relNumber,
          fork: r.fork,
          limit: null,
          blocks: new Uint32Array(0),
        };
        cs.relations.set(key, acc);
        blockSets.set(key, new Set());
      }
      if (r.limit !== null && (acc.limit === null || r.limit < acc.limit)) acc.limit = r.limit;
      const set = blockSets.get(key)!;
      for (const b of r.blocks) set.add(b);
    }
    for (const e of m.events) {
      cs.events.push(e);
      if (e.kind === 'database-create') cs.createdDatabases.push({ spcOid: e.spcOid, dbOid: e.dbOid });
      else if (e.kind === 'database-drop')
        for (const s of e.spcOids) cs.droppedDatabases.push({ spcOid: s, dbOid: e.dbOid });
      else if (e.kind === 'tablespace-create') cs.createdTablespaces.push(e.spcOid);
      else if (e.kind === 'tablespace-drop') cs.droppedTablespaces.push(e.spcOid);
      else if (e.kind === 'wal-level-change' && e.walLevel === 'minimal') cs.walLevelMinimal = true;
      else if (e.kind === 'full-page-writes-change' && !e.on) cs.fullPageWritesOff = true;
    }
  }
  for (const [key, acc] of cs.relations) acc.blocks = Uint32Array.from(blockSets.get(key)!).sort();
  return cs;
}

/** One-line description of the first missing segment, for errors. */
export function describeMissing(archive: ScanArchive, cs: ChangeSet): string | undefined {
  const first = cs.missingSegments[0];
  if (first === undefined) return undefined;
  const where = typeof archive === 'string' ? archive : archive.location;
  return `WAL segment ${first} has no modified block map (MBM) in ${where}; ${cs.missingSegments.length} of the segments from ${formatLsn(cs.startLsn)} to ${formatLsn(cs.endLsn)} are not scanned`;
}
