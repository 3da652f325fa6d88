// Scan summary: what scanning one segment reports to the daemon, small enough to cross worker threads.

import { isErrnoError } from '../util/errors.js';
import { scanWalFile, type ScanOptions, type ScanResult } from './scan-wal-file.js';

/** What a scan task reports back to the daemon. */
export type ScanSummary =
  | { status: 'written'; mbmPath: string; records: number; relations: number; events: number }
  | { status: 'waiting'; nextSegment: string }
  /** The file disappeared while being read (e.g. MANAGE compressed or removed it). */
  | { status: 'vanished' };

/** The summary of a scan: counts instead of the block map itself, which the caller does not need. */
export function summarizeScan(r: ScanResult): ScanSummary {
  if (r.status === 'waiting') return { status: 'waiting', nextSegment: r.nextSegment };
  return {
    status: 'written',
    mbmPath: r.mbmPath,
    records: r.map.records,
    relations: r.map.relations.length,
    events: r.map.events.length,
  };
}

/**
 * Scans one segment with {@link scanWalFile} and summarizes it. A file that vanished meanwhile
 * (ENOENT) is reported as `vanished`, not thrown: the archive may compress or remove it any time.
 */
export async function scanToSummary(path: string, opts: ScanOptions): Promise<ScanSummary> {
  try {
    return summarizeScan(await scanWalFile(path, opts));
  } catch (err) {
    if (isErrnoError(err) && err.code === 'ENOENT') return { status: 'vanished' };
    throw err;
  }
}
