// Scanner: every WAL segment of an LSN range given its MBM, scanning the ones that lack it.

import { errorMessage } from '../util/errors.js';
import { log } from '../util/log.js';
import { indexMbmFiles, segmentsOfRange, type ChangeSetRequest } from './change-set.js';
import { findSegmentFile, scanWalFile, type ScanBuffers } from './scan-wal-file.js';
import { DEFAULT_WAL_SEGMENT_SIZE } from '../postgres/constants.js';

/** Result of {@link ensureMbms}. */
export interface EnsureMbmsResult {
  /** Every segment of the range has its MBM. */
  complete: boolean;
  /** Segments whose WAL file is not in the archive (nothing to scan yet). */
  missingWal: string[];
  /** Segments whose last record waits for the next segment. */
  waiting: string[];
  /** Segments that could not be scanned (bad WAL), with the reason. */
  errors: Array<{ segment: string; message: string }>;
  /** MBMs written by this call. */
  written: string[];
}

/**
 * Makes sure every WAL segment with records in [startLsn, endLsn) on the timeline's history has
 * an MBM, scanning the ones that lack it (in this process). Used by the scanner daemon when a
 * client asks, and by the incremental backup when no scanner runs.
 */
export async function ensureMbms(
  archivePath: string,
  req: ChangeSetRequest,
  buffers: ScanBuffers = {},
): Promise<EnsureMbmsResult> {
  const segSize = req.segmentSize ?? DEFAULT_WAL_SEGMENT_SIZE;
  const index = indexMbmFiles(archivePath);
  const out: EnsureMbmsResult = { complete: true, missingWal: [], waiting: [], errors: [], written: [] };
  for (const seg of segmentsOfRange(archivePath, req)) {
    const segEnd = (seg.segNo + 1n) * BigInt(segSize);
    if (index.has(`${seg.timeline}:${segEnd}`)) continue;
    out.complete = false;
    const wal = findSegmentFile(archivePath, seg.name);
    if (!wal) {
      out.missingWal.push(seg.name);
      continue;
    }
    try {
      const r = await scanWalFile(wal, { buffers });
      if (r.status === 'written') {
        out.written.push(r.mbmPath);
        log.debug(`scanned ${wal}: ${r.map.records} records, ${r.map.relations.length} relation forks`);
      } else {
        out.waiting.push(seg.name);
      }
    } catch (err) {
      out.errors.push({ segment: seg.name, message: errorMessage(err) });
    }
  }
  if (out.missingWal.length === 0 && out.waiting.length === 0 && out.errors.length === 0) out.complete = true;
  return out;
}
