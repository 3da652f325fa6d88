// Retention of WAL: which archived WAL files no remaining backup needs and can be deleted.

import { parseMbmFileName } from '../scanner/mbm-name.js';
import { parseArchiveFileName, segmentNumberFromName } from '../wal/segment-name.js';
import { GZIP_SUFFIX } from '../catalog/layout.js';
import { DEFAULT_WAL_SEGMENT_SIZE } from '../postgres/constants.js';

/** What the WAL-retention rule needs to know about a backup that stays in the catalog. */
export interface RetainedBackupWal {
  id: string;
  /** Timeline the backup started on (0 when unknown). */
  timeline: number;
  /** Name of the segment holding the backup's start LSN ('' when unknown). */
  startWalFile: string;
  walSegmentSize: number;
}

/** The outcome of the rule for one archive directory. */
export interface WalCleanupPlan {
  /** Archive file names to delete, sorted. */
  remove: string[];
  /** Why nothing older is kept, for the log. */
  reason: string;
  /** Segment number from which everything is kept (undefined: nothing is kept by segment). */
  keepFromSegNo?: bigint;
}

/**
 * The WAL-retention rule: an archive file may go only when no backup that stays needs it, for its
 * own consistency or for point-in-time recovery up to the newest archived WAL. Every backup's
 * recovery starts at its start segment and may replay everything after it, so everything at or
 * after the oldest remaining backup's start segment stays: WAL segments (plain or `.gz`),
 * `.partial` segments, `.backup` files and MBM files, compared by segment number on any timeline
 * (a timeline switch continues the numbering). Timeline history files stay for every timeline from
 * the oldest remaining backup's timeline upwards (recovery to `latest` and promotion look them up);
 * older ones go. A remaining backup whose start is unknown keeps everything.
 *
 * With no backup left, no restore can use the archive: segments, `.backup`, `.partial` and MBM files
 * go, history files stay (tiny, and PostgreSQL picks new timeline IDs by looking for them). Files
 * that are not archive files (temp files, foreign files) are never touched here.
 */
export function planWalCleanup(
  archiveNames: readonly string[],
  remaining: readonly RetainedBackupWal[],
): WalCleanupPlan {
  let keepFrom: bigint | undefined;
  let minTimeline: number | undefined;
  let segSize = DEFAULT_WAL_SEGMENT_SIZE;
  let oldest: RetainedBackupWal | undefined;
  for (const b of remaining) {
    if (b.startWalFile === '' || !/^[0-9A-F]{24}$/.test(b.startWalFile) || b.timeline <= 0) {
      return { remove: [], reason: `backup ${b.id} has no known start WAL file, so every archived file is kept` };
    }
    segSize = b.walSegmentSize;
    const segNo = segmentNumberFromName(b.startWalFile, b.walSegmentSize);
    if (keepFrom === undefined || segNo < keepFrom) {
      keepFrom = segNo;
      oldest = b;
    }
    minTimeline = minTimeline === undefined ? b.timeline : Math.min(minTimeline, b.timeline);
  }
  const remove: string[] = [];
  for (const name of archiveNames) {
    const base = name.endsWith(GZIP_SUFFIX) ? name.slice(0, -GZIP_SUFFIX.length) : name;
    const parsed = parseArchiveFileName(base);
    let segNo: bigint | undefined;
    if (parsed) {
      if (parsed.kind === 'history') {
        if (minTimeline !== undefined && parsed.timeline < minTimeline) remove.push(name);
        continue;
      }
      segNo = segmentNumberFromName(parsed.segment!, segSize);
    } else if (base === name) {
      const mbm = parseMbmFileName(name);
      if (!mbm) continue;
      // An MBM covers records up to the end of the segment it scanned: identify it by that segment.
      segNo = (mbm.endLsn - 1n) / BigInt(segSize);
    } else {
      continue;
    }
    if (keepFrom === undefined || segNo < keepFrom) remove.push(name);
  }
  remove.sort();
  const reason = oldest
    ? `everything from ${oldest.startWalFile} (start of the oldest remaining backup ${oldest.id}) onwards is kept`
    : 'no backup remains, so no archived WAL is needed (timeline history files are kept)';
  return { remove, reason, ...(keepFrom !== undefined ? { keepFromSegNo: keepFrom } : {}) };
}
