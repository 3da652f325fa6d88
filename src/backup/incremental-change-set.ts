// Incremental backup: the change set since the parent, gathered from the MBMs of the archived WAL range.

import type { BartConfig, ServerConfig } from '../config/types.js';
import { describeMissing, loadChangeSet, type ChangeSet } from '../scanner/change-set.js';
import { ensureMbms } from '../scanner/ensure-mbms.js';
import { findArchivedSegment, readArchivedTimelineHistory } from '../scanner/archive-source.js';
import { requestMbms } from '../scanner/client.js';
import { openWalArchive } from '../storage/open-repository.js';
import type { RepositoryStorage } from '../storage/storage.js';
import { readTimelineHistory, type TimelineSpan } from '../wal/timeline-history.js';
import { segmentName, segmentNumberFromName } from '../wal/segment-name.js';
import { BartError, errorMessage } from '../util/errors.js';
import { log } from '../util/log.js';
import { formatLsn, parseLsn, type Lsn } from '../util/lsn.js';
import type { BackupInfo } from '../catalog/backup-info.js';

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

function missingWal(archive: RepositoryStorage, parent: BackupInfo, segment: string): BartError {
  return new BartError(
    `WAL segment ${segment} is missing from ${archive.location}: the changes since parent backup ${parent.id} cannot be known; ${NEEDS_FULL}`,
  );
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
    throw new BartError(
      `cannot check that parent backup ${parent.id} is on the history of timeline ${timeline}: ${errorMessage(err)}`,
    );
  }
  checkParentOnSpans(history, parent, timeline);
}

/** {@link checkParentOnHistory} with the history file read through the WAL archive storage (any driver). */
export async function checkParentOnArchivedHistory(
  archive: RepositoryStorage,
  parent: BackupInfo,
  timeline: number,
): Promise<void> {
  let history;
  try {
    history = await readArchivedTimelineHistory(archive, timeline);
  } catch (err) {
    throw new BartError(
      `cannot check that parent backup ${parent.id} is on the history of timeline ${timeline}: ${errorMessage(err)}`,
    );
  }
  checkParentOnSpans(history, parent, timeline);
}

function checkParentOnSpans(history: TimelineSpan[], parent: BackupInfo, timeline: number): void {
  const span = history.find((s) => s.timeline === parent.timeline);
  const stop = parseLsn(parent.stopLsn);
  if (!span || stop < span.begin || (span.end !== undefined && stop > span.end)) {
    const path = history
      .map((s) => `${s.timeline}${s.end !== undefined ? ` (until ${formatLsn(s.end)})` : ''}`)
      .join(' → ');
    throw new BartError(
      `parent backup ${parent.id} (timeline ${parent.timeline}, consistent at ${parent.stopLsn}) is not an ancestor of the server's current timeline ${timeline} (history ${path}); ${NEEDS_FULL} or choose another parent`,
    );
  }
}

/**
 * The change set of an incremental backup: asks bart-scanner for the MBMs of the range (it waits
 * up to mbm_scan_timeout for WAL still arriving), scans the rest on the spot when no scanner runs,
 * and merges them. Fails naming the first segment whose WAL is missing or unreadable: the blocks
 * it changed can never be known, so only a new full backup is safe. Also refuses a range in which
 * the server ran with wal_level = minimal (the MBMs record XLOG_PARAMETER_CHANGE).
 */
export async function gatherChangeSet(
  config: BartConfig,
  server: ServerConfig,
  parent: BackupInfo,
  range: IncrementalRange,
): Promise<ChangeSet> {
  const archive = openWalArchive(config, server);
  try {
    return await gatherFrom(archive, config, server, parent, range);
  } finally {
    await archive.close();
  }
}

async function gatherFrom(
  archive: RepositoryStorage,
  config: BartConfig,
  server: ServerConfig,
  parent: BackupInfo,
  range: IncrementalRange,
): Promise<ChangeSet> {
  let ensured = await requestMbms(config, server, range);
  if (ensured.scannerRunning && !ensured.complete) {
    // The scanner did not finish within mbm_scan_timeout (busy, or not watching this server): scan here.
    ensured = { ...(await ensureMbms(archive, range)), scannerRunning: true };
  }
  log.debug(
    `MBMs for ${formatLsn(range.startLsn)}..${formatLsn(range.endLsn)}: ${ensured.complete ? 'complete' : 'incomplete'} (scanner ${ensured.scannerRunning ? 'running' : 'not running, scanned here'})`,
  );
  const cs = await loadChangeSet(archive, range);
  for (const seg of cs.missingSegments) {
    if (!(await findArchivedSegment(archive, seg))) throw missingWal(archive, parent, seg);
    const error = ensured.errors.find((e) => e.segment === seg);
    if (error) throw new BartError(`WAL segment ${seg} cannot be scanned (${error.message}); ${NEEDS_FULL}`);
    if (ensured.waiting.includes(seg)) {
      // Its last record continues in the next segment, which is what is really missing.
      const next = nextSegmentName(seg, range.segmentSize);
      if (!(await findArchivedSegment(archive, next))) throw missingWal(archive, parent, next);
    }
    throw new BartError(
      `${describeMissing(archive, cs)}; is bart-scanner keeping up (mbm_scan_timeout = ${server.mbmScanTimeout} s)?`,
    );
  }
  if (cs.systemId !== undefined && cs.systemId !== 0n && String(cs.systemId) !== parent.systemIdentifier) {
    throw new BartError(
      `the WAL since parent backup ${parent.id} belongs to another cluster (system identifier ${cs.systemId}, the parent's is ${parent.systemIdentifier})`,
    );
  }
  if (cs.walLevelMinimal) {
    // Relations created and loaded in one transaction under wal_level = minimal have no block
    // references at all: no MBM can know about them.
    throw new BartError(
      `the server ran with wal_level = minimal after parent backup ${parent.id}; WAL then lacks the changes of bulk loads, so no incremental backup can be taken on that parent: ${NEEDS_FULL}`,
    );
  }
  return cs;
}
