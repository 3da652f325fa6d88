// Scanner protocol: the JSON-line requests and answers on the bart-scanner socket.

/**
 * Messages on the bart-scanner socket: one JSON object per line each way.
 * `ping` answers whether the scanner runs; `ensure` asks it to make the MBMs of an LSN range
 * complete (scanning what is missing, waiting for WAL still to arrive) within a timeout.
 */
import { BartError } from '../util/errors.js';
import { parseLsn } from '../util/lsn.js';
import { checkRangeBounds } from './change-set.js';

export type ScannerRequest =
  | { op: 'ping' }
  | {
      op: 'ensure';
      server: string;
      timeline: number;
      startLsn: string;
      endLsn: string;
      timeoutSec: number;
      segmentSize?: number;
    };

/** Answer to a {@link ScannerRequest}. */
export type ScannerResponse =
  | { ok: true; op: 'ping'; pid: number; servers: string[] }
  | {
      ok: true;
      op: 'ensure';
      complete: boolean;
      missingWal: string[];
      waiting: string[];
      errors: Array<{ segment: string; message: string }>;
    }
  | { ok: false; error: string };

/** Longest request line the scanner reads (a real request is about 150 bytes). */
export const MAX_REQUEST_BYTES = 64 * 1024;

/** Longest wait an `ensure` may ask for: mbm_scan_timeout's own maximum (a day). */
export const MAX_ENSURE_TIMEOUT_SEC = 86400;

const LSN_TEXT = /^[0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8}$/;

/**
 * Parses and validates one request line from the socket: every field's type and range, LSN
 * syntax, start <= end and the range's size ({@link checkRangeBounds}), before any work is done.
 * Throws BartError naming the field at fault.
 */
export function parseScannerRequest(line: string): ScannerRequest {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    throw new BartError('request is not JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new BartError('request is not a JSON object');
  const o = v as Record<string, unknown>;
  if (o.op === 'ping') return { op: 'ping' };
  if (o.op !== 'ensure') throw new BartError(`unknown request "${String(o.op).slice(0, 40)}"`);
  const { server, timeline, startLsn, endLsn, timeoutSec, segmentSize } = o;
  if (typeof server !== 'string' || server === '' || server.length > 256) {
    throw new BartError('ensure: "server" must be a server name');
  }
  if (typeof timeline !== 'number' || !Number.isInteger(timeline) || timeline < 1 || timeline > 0xffffffff) {
    throw new BartError('ensure: "timeline" must be an integer from 1 to 4294967295');
  }
  for (const [name, value] of [
    ['startLsn', startLsn],
    ['endLsn', endLsn],
  ] as const) {
    if (typeof value !== 'string' || !LSN_TEXT.test(value)) {
      throw new BartError(`ensure: "${name}" must be an LSN of the form X/Y`);
    }
  }
  if (typeof timeoutSec !== 'number' || !(timeoutSec >= 0 && timeoutSec <= MAX_ENSURE_TIMEOUT_SEC)) {
    throw new BartError(`ensure: "timeoutSec" must be a number of seconds from 0 to ${MAX_ENSURE_TIMEOUT_SEC}`);
  }
  if (segmentSize !== undefined && typeof segmentSize !== 'number') {
    throw new BartError('ensure: "segmentSize" must be a number');
  }
  const start = parseLsn(startLsn as string);
  const end = parseLsn(endLsn as string);
  if (end < start) throw new BartError(`ensure: the range ${startLsn}..${endLsn} ends before it starts`);
  const size = segmentSize !== undefined ? { segmentSize } : {};
  checkRangeBounds({ timeline, startLsn: start, endLsn: end, ...size });
  return {
    op: 'ensure',
    server,
    timeline,
    startLsn: startLsn as string,
    endLsn: endLsn as string,
    timeoutSec,
    ...size,
  };
}
