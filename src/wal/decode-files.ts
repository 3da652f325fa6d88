// WAL decoding: WAL files decoded in order, records stitched across file boundaries.

import { loadWalFileLazy, walFileSegNo } from './file.js';
import { WalDecoder } from './decoder.js';
import type { WalRecord } from './record.js';

/** Summary of decoding a run of WAL files. */
export interface DecodeFilesResult {
  records: number;
  /** Major version of the server that wrote the WAL. */
  major: number;
  systemId: bigint | undefined;
  segmentSize: number;
  /** LSN of a record cut off at the end of the last file (it continues in a file not given). */
  incompleteRecordLsn?: number;
  /** Where decoding stopped. */
  endLsn: number;
}

/**
 * Decodes WAL files in the order given (consecutive segments of one timeline, as pg_waldump
 * does); a record crossing from one file into the next is stitched together. A gap between files
 * simply restarts at the next file's first record.
 */
export async function decodeWalFiles(
  paths: readonly string[],
  onRecord: (r: WalRecord) => void,
  opts: { timeline?: number; allowEndOfWal?: boolean } = {},
): Promise<DecodeFilesResult> {
  const decoder = new WalDecoder({
    onRecord,
    ...(opts.timeline !== undefined ? { timeline: opts.timeline } : {}),
    allowEndOfWal: opts.allowEndOfWal === true,
  });
  let buf: Buffer | undefined;
  let records = 0;
  let endLsn = 0;
  let lastSegNo = -2;
  for (const path of paths) {
    const f = await loadWalFileLazy(path, buf);
    buf = f.buffer;
    let r;
    try {
      const segSize = decoder.segmentSize || f.segmentSize;
      const segNo = segSize ? walFileSegNo(f.segmentName, segSize) : 0;
      if (decoder.hasPendingRecord && segNo !== lastSegNo + 1) decoder.dropPending();
      r = decoder.feedSegment(f.buffer, f.length, segNo, path, f.lazy ? { fill: f.lazy.fill } : {});
      lastSegNo = segNo;
    } finally {
      f.lazy?.close();
    }
    records += r.records;
    endLsn = r.endLsn;
    if (r.status === 'endOfWal') break;
  }
  return {
    records,
    major: decoder.version?.major ?? 0,
    systemId: decoder.systemId,
    segmentSize: decoder.segmentSize,
    ...(decoder.hasPendingRecord ? { incompleteRecordLsn: decoder.pendingRecordLsn } : {}),
    endLsn,
  };
}
