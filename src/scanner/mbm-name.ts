// MBM name: an MBM's file name, timeline and start and end LSN, built and parsed.

import { basename } from 'node:path';

/**
 * MBM file names: `<timeline 8 hex>_<start LSN 16 hex>_<end LSN 16 hex>.mbm`, e.g.
 * `00000001_0000000001000028_0000000002000000.mbm` for the records that start in segment
 * 000000010000000000000001. The end LSN is always the end of the WAL segment scanned, so
 * (timeline, end LSN) identifies the segment.
 */
export interface MbmName {
  timeline: number;
  startLsn: bigint;
  endLsn: bigint;
}

const MBM_RE = /^([0-9A-F]{8})_([0-9A-F]{16})_([0-9A-F]{16})\.mbm$/;

/** Builds the file name of an MBM. */
export function mbmFileName(timeline: number, startLsn: bigint, endLsn: bigint): string {
  const h = (n: bigint, w: number) => n.toString(16).toUpperCase().padStart(w, '0');
  return `${h(BigInt(timeline), 8)}_${h(startLsn, 16)}_${h(endLsn, 16)}.mbm`;
}

/** Parses an MBM file name (or path); undefined when it is not one. */
export function parseMbmFileName(path: string): MbmName | undefined {
  const m = MBM_RE.exec(basename(path));
  if (!m) return undefined;
  return { timeline: parseInt(m[1]!, 16), startLsn: BigInt('0x' + m[2]), endLsn: BigInt('0x' + m[3]) };
}
