// Scanner: every WAL segment of an LSN range given its MBM, scanning the ones that lack it.

import { errorMessage } from '../util/errors.js';
import { log } from '../util/log.js';
import { archivedSegmentsOfRange, indexArchivedMbms, type ChangeSetRequest } from './change-set.js';
import { scanArchivedSegment, type ScanBuffers } from './scan-wal-file.js';
import { archiveNameSet, findArchivedSegment, scanArchiveStorage, type ScanArchive } from './archive-source.js';
import { joinKey } from '../storage/storage.js';
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
 * an MBM, scanning the ones that lack it (in this process), reading them through the archive
 * storage (an object store: no local copy needed). Used by the scanner daemon when a client asks,
 * and by the incremental backup when no scanner runs.
 */
export async function ensureMbms(
  archive: ScanArchive,
  req: ChangeSetRequest,
  buffers: ScanBuffers = {},
): Promise<EnsureMbmsResult> {
  const storage = scanArchiveStorage(archive);
  const segSize = req.segmentSize ?? DEFAULT_WAL_SEGMENT_SIZE;
  const segments = await archivedSegmentsOfRange(storage, req);
  const index = await indexArchivedMbms(storage);
  const out: EnsureMbmsResult = { complete: true, missingWal: [], waiting: [], errors: [], written: [] };
  // One listing for the lookups, taken only when something is to be scanned (POSIX: stat is cheap).
  let names: Set<string> | undefined;
  for (const seg of segments) {
    const segEnd = (seg.segNo + 1n) * BigInt(segSize);
    if (index.has(`${seg.timeline}:${segEnd}`)) continue;
    out.complete = false;
    if (names === undefined && storage.localPath('') === undefined) names = await archiveNameSet(storage);
    const wal = await findArchivedSegment(storage, seg.name, names);
    if (!wal) {
      out.missingWal.push(seg.name);
      continue;
    }
    try {
      const r = await scanArchivedSegment(storage, wal, { buffers, ...(names ? { names } : {}) });
      if (r.status === 'written') {
        out.written.push(joinKey(storage.location, r.mbmPath));
        log.debug(
          `scanned ${joinKey(storage.location, wal)}: ${r.map.records} records, ${r.map.relations.length} relation forks`,
        );
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
