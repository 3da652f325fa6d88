// WAL segment names: archive file names parsed, segment numbers, names and start LSNs computed.

import { DEFAULT_WAL_SEGMENT_SIZE } from '../postgres/constants.js';
import { type Lsn } from '../util/lsn.js';

/** What kind of file a name in the WAL archive is. */
export type ArchiveFileKind = 'segment' | 'partial' | 'history' | 'backup';

/** A parsed archive file name. */
export interface ArchiveFileName {
  kind: ArchiveFileKind;
  timeline: number;
  /** For segments, partial segments and .backup files: the 24-hex-digit segment name. */
  segment?: string;
}

const SEGMENT = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$/;
const PARTIAL = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})\.partial$/;
const HISTORY = /^([0-9A-F]{8})\.history$/;
const BACKUP = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})\.([0-9A-F]{8})\.backup$/;

/**
 * Recognises the names PostgreSQL archives: WAL segments (`000000010000000000000003`), partial
 * segments (`.partial`), timeline history files (`00000002.history`) and backup history files
 * (`...00000003.00000028.backup`). Anything else is undefined.
 */
export function parseArchiveFileName(name: string): ArchiveFileName | undefined {
  let m = SEGMENT.exec(name);
  if (m) return { kind: 'segment', timeline: parseInt(m[1]!, 16), segment: name };
  m = PARTIAL.exec(name);
  if (m) return { kind: 'partial', timeline: parseInt(m[1]!, 16), segment: name.slice(0, 24) };
  m = HISTORY.exec(name);
  if (m) return { kind: 'history', timeline: parseInt(m[1]!, 16) };
  m = BACKUP.exec(name);
  if (m) return { kind: 'backup', timeline: parseInt(m[1]!, 16), segment: name.slice(0, 24) };
  return undefined;
}

/** Segment number of an LSN for a segment size. */
export function segmentNumberOf(lsn: Lsn, segmentSize = DEFAULT_WAL_SEGMENT_SIZE): bigint {
  return lsn / BigInt(segmentSize);
}

/** Name of the WAL segment holding `lsn` on `timeline` (as pg_walfile_name, but for any LSN). */
export function segmentName(timeline: number, segNo: bigint, segmentSize = DEFAULT_WAL_SEGMENT_SIZE): string {
  const perId = 0x100000000n / BigInt(segmentSize);
  const hi = segNo / perId;
  const lo = segNo % perId;
  const h = (n: bigint | number) => n.toString(16).toUpperCase().padStart(8, '0');
  return `${h(timeline)}${h(hi)}${h(lo)}`;
}

/** Segment number encoded in a 24-hex-digit segment name. */
export function segmentNumberFromName(name: string, segmentSize = DEFAULT_WAL_SEGMENT_SIZE): bigint {
  const perId = 0x100000000n / BigInt(segmentSize);
  return BigInt('0x' + name.slice(8, 16)) * perId + BigInt('0x' + name.slice(16, 24));
}

/** Timeline of a segment name. */
export function timelineFromName(name: string): number {
  return parseInt(name.slice(0, 8), 16);
}

/** First LSN of a segment. */
export function segmentStartLsn(segNo: bigint, segmentSize = DEFAULT_WAL_SEGMENT_SIZE): Lsn {
  return segNo * BigInt(segmentSize);
}
