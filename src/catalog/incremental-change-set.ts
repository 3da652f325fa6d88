import type { BartConfig, ServerConfig } from '../config/types.js';
import { describeMissing, loadChangeSet, segmentsOfRange, type ChangeSet } from '../scanner/change-set.js';
import { findSegmentFile } from '../scanner/scan-wal-file.js';
import { requestMbms } from '../scanner/scanner-client.js';
import { decodeWalFiles } from '../wal/decode-files.js';
import { readTimelineHistory } from '../wal/timeline-history.js';
import { segmentName, segmentNumberFromName } from '../wal/segment-name.js';
import { RM_XLOG_ID } from '../wal/wal-constants.js';
import { BartError, errorMessage } from '../util/errors.js';
import { log } from '../util/log.js';
import { formatLsn, parseLsn, type Lsn } from '../util/lsn.js';
import type { BackupInfo } from './backup-info.js';

/** The WAL range an incremental backup covers: records starting in [startLsn, endLsn) on `timeline`'s history. */
export interface IncrementalRange {
  timeline: number;
  /** The parent's start (redo) LSN. */
  startLsn: Lsn;
  /** The new backup's start (redo) LSN. */
  endLsn: Lsn;
  segmentSize: number;
}

const NEEDS_FULL = 'take a new full backup';

function missingWal(server: ServerConfig, parent: BackupInfo, segment: string): BartError {
  return new BartError(`WAL segment ${segment} is missing from ${server.archivePath}: the changes since parent backup ${parent.id} cannot be known; ${NEEDS_FULL}`);
}

/** The name of the segment after `name` on the same timeline. */
function nextSegmentName(name: string, segmentSize: number): string {
  return segmentName(parseInt(name.slice(0, 8), 16), segmentNumberFromName(name, segmentSize) + 1n, segmentSize);
}

/**
 * Refuses a parent that is not an ancestor of the server's current timeline: its timeline must be
 * on the current timeline's history, and the parent must have reached consistency (its stop LSN)
 * before that history left its timeline; otherwise the parent holds changes of a timeline the
 * server did not follow.
 */
export function checkParentOnHistory(archivePath: string, parent: BackupInfo, timeline: number): void {
  let history;
  try {
    history = readTimelineHistory(archivePath, timeline);
  } catch (err) {
    throw new BartError(`cannot check that parent backup ${parent.id} is on the history of timeline ${timeline}: ${errorMessage(err)}`);
  }
  const span = history.find((s) => s.timeline === parent.timeline);
  const stop = parseLsn(parent.stopLsn);
  if (!span || stop < span.begin || (span.end !== undefined && stop > span.end)) {
    const path = history.map((s) => `${s.timeline}${s.end !== undefined ? ` (until ${formatLsn(s.end)})` : ''}`).join(' → ');
    throw new BartError(
      `parent backup ${parent.id} (timeline ${parent.timeline}, consistent at ${parent.stopLsn}) is not an ancestor of the server's current timeline ${timeline} (history ${path}); ${NEEDS_FULL} or choose another parent`,
    );
  }
}

/** xl_info of XLOG_PARAMETER_CHANGE, and the offset of wal_level in xl_parameter_change (six ints: ..., max_locks_per_xact, wal_level). */
const XLOG_PARAMETER_CHANGE = 0x60;
const WAL_LEVEL_OFFSET = 20;
const WAL_LEVEL_MINIMAL = 0;

/**
 * Refuses a range in which the server ran with wal_level = minimal: relations created and loaded in
 * one transaction then have no block references in WAL at all, so no MBM can know about them. The
 * server announces every wal_level change with an XLOG_PARAMETER_CHANGE record at startup; the MBMs
 * do not keep those, so the range's WAL is read once more here (records are only decoded, cheap next
 * to copying data).
 */
export async function checkNoMinimalWal(archivePath: string, range: IncrementalRange): Promise<void> {
  const paths: string[] = [];
  for (const seg of segmentsOfRange(archivePath, range)) {
    const p = findSegmentFile(archivePath, seg.name);
    if (!p) throw new BartError(`WAL segment ${seg.name} (between the parent's start and this backup's start) is missing from ${archivePath}; ${NEEDS_FULL}`);
    paths.push(p);
  }
  let minimalAt: number | undefined;
  const start = Number(range.startLsn);
  const end = Number(range.endLsn);
  await decodeWalFiles(paths, (r) => {
    if (r.rmid !== RM_XLOG_ID || (r.info & 0xf0) !== XLOG_PARAMETER_CHANGE || r.lsn < start || r.lsn >= end) return;
    if (r.mainDataLength >= WAL_LEVEL_OFFSET + 4 && r.buffer.readInt32LE(r.mainDataOffset + WAL_LEVEL_OFFSET) === WAL_LEVEL_MINIMAL) minimalAt ??= r.lsn;
  }, { timeline: range.timeline });
  if (minimalAt !== undefined) {
    throw new BartError(`the server ran with wal_level = minimal after the parent backup (from LSN ${formatLsn(BigInt(minimalAt))}); WAL then lacks the changes of bulk loads, so no incremental backup can be taken from that parent: ${NEEDS_FULL}`);
  }
}

/**
 * The change set of an incremental backup: asks bart-scanner for the MBMs of the range (it waits
 * up to mbm_scan_timeout for WAL still arriving), scans the rest on the spot when no scanner runs,
 * and merges them. Fails naming the first segment whose WAL is missing or unreadable: the blocks
 * it changed can never be known, so only a new full backup is safe.
 */
export async function gatherChangeSet(config: BartConfig, server: ServerConfig, parent: BackupInfo, range: IncrementalRange): Promise<ChangeSet> {
  const ensured = await requestMbms(config, server, range);
  log.debug(`MBMs for ${formatLsn(range.startLsn)}..${formatLsn(range.endLsn)}: ${ensured.complete ? 'complete' : 'incomplete'} (scanner ${ensured.scannerRunning ? 'running' : 'not running, scanned here'})`);
  const cs = await loadChangeSet(server.archivePath, range);
  for (const seg of cs.missingSegments) {
    if (!findSegmentFile(server.archivePath, seg)) throw missingWal(server, parent, seg);
    const error = ensured.errors.find((e) => e.segment === seg);
    if (error) throw new BartError(`WAL segment ${seg} cannot be scanned (${error.message}); ${NEEDS_FULL}`);
    if (ensured.waiting.includes(seg)) {
      // Its last record continues in the next segment, which is what is really missing.
      const next = nextSegmentName(seg, range.segmentSize);
      if (!findSegmentFile(server.archivePath, next)) throw missingWal(server, parent, next);
    }
    throw new BartError(`${describeMissing(server.archivePath, cs)}; is bart-scanner keeping up (mbm_scan_timeout = ${server.mbmScanTimeout} s)?`);
  }
  if (cs.systemId !== undefined && cs.systemId !== 0n && String(cs.systemId) !== parent.systemIdentifier) {
    throw new BartError(`the WAL since parent backup ${parent.id} belongs to another cluster (system identifier ${cs.systemId}, the parent's is ${parent.systemIdentifier})`);
  }
  await checkNoMinimalWal(server.archivePath, range);
  return cs;
}
