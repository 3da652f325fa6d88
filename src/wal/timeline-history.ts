// Timeline history: history files parsed and read, and the timeline a segment belongs to.

import { existsSync, readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { join } from 'node:path';
import { BartError } from '../util/errors.js';
import { parseLsn, type Lsn } from '../util/lsn.js';

/** One timeline of a history: valid for LSNs in [begin, end) (end undefined: still current). */
export interface TimelineSpan {
  timeline: number;
  begin: Lsn;
  end?: Lsn;
}

/** Name of the history file of a timeline, e.g. `00000002.history`. */
export function historyFileName(timeline: number): string {
  return `${timeline.toString(16).toUpperCase().padStart(8, '0')}.history`;
}

/**
 * Parses a timeline history file (`<parent tli>\t<switch LSN>\t<reason>` per line, `#` comments)
 * into the spans leading to `timeline`, oldest first.
 */
export function parseTimelineHistory(text: string, timeline: number, label: string): TimelineSpan[] {
  const spans: TimelineSpan[] = [];
  let begin = 0n;
  let lastTli = 0;
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const f = line.split(/\s+/);
    const tli = Number(f[0]);
    if (!Number.isInteger(tli) || tli <= lastTli || f[1] === undefined)
      throw new BartError(`invalid timeline history file "${label}", line ${i + 1}: "${line}"`);
    let end: Lsn;
    try {
      end = parseLsn(f[1]);
    } catch {
      throw new BartError(`invalid timeline history file "${label}", line ${i + 1}: bad switch point "${f[1]}"`);
    }
    spans.push({ timeline: tli, begin, end });
    begin = end;
    lastTli = tli;
  });
  if (timeline <= lastTli)
    throw new BartError(`timeline history file "${label}" lists timeline ${lastTli}, not older than ${timeline}`);
  spans.push({ timeline, begin });
  return spans;
}

/** Reads the history of `timeline` from a WAL archive (plain or .gz); timeline 1 has none. */
export function readTimelineHistory(archiveDir: string, timeline: number): TimelineSpan[] {
  if (timeline === 1) return [{ timeline: 1, begin: 0n }];
  const name = historyFileName(timeline);
  const plain = join(archiveDir, name);
  if (existsSync(plain)) return parseTimelineHistory(readFileSync(plain, 'utf8'), timeline, plain);
  if (existsSync(`${plain}.gz`))
    return parseTimelineHistory(gunzipSync(readFileSync(`${plain}.gz`)).toString('utf8'), timeline, `${plain}.gz`);
  throw new BartError(`timeline history file ${name} for timeline ${timeline} is not in the WAL archive ${archiveDir}`);
}

/**
 * The timeline whose WAL file holds segment `segNo` in this history: the newest timeline that
 * began at or before that segment (as recovery picks files).
 */
export function timelineOfSegment(spans: readonly TimelineSpan[], segNo: bigint, segmentSize: number): number {
  let tli = spans[0]!.timeline;
  for (const s of spans) if (s.begin / BigInt(segmentSize) <= segNo) tli = s.timeline;
  return tli;
}
