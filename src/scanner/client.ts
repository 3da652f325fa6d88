// Scanner client: requests to the bart-scanner socket, ping and ensure the MBMs of an LSN range.

import { createConnection } from 'node:net';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { formatLsn, type Lsn } from '../util/lsn.js';
import { checkRangeBounds } from './change-set.js';
import { ensureMbms, type EnsureMbmsResult } from './ensure-mbms.js';
import { openWalArchive } from '../storage/open-repository.js';
import type { ScannerRequest, ScannerResponse } from './protocol.js';
import { prepareSocketDirectory, scannerSocketPath } from './paths.js';

/**
 * Longest answer read from the socket: an ensure answer lists at most MAX_RANGE_SEGMENTS segment
 * names (about 30 bytes each); whatever answers there must not make us buffer without end.
 */
const MAX_RESPONSE_BYTES = 64 * 1024 * 1024;

/**
 * Sends one request to the scanner socket; rejects on connection failure or timeout, and when
 * the default socket directory is not private to us (whoever controls it could answer for the scanner).
 */
export function askScanner(config: BartConfig, req: ScannerRequest, timeoutMs: number): Promise<ScannerResponse> {
  return new Promise((resolvePromise, reject) => {
    try {
      prepareSocketDirectory(config, false);
    } catch (err) {
      reject(err as Error);
      return;
    }
    const sock = createConnection(scannerSocketPath(config));
    let data = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`bart-scanner did not answer within ${Math.round(timeoutMs / 1000)} s`));
    }, timeoutMs);
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(JSON.stringify(req) + '\n'));
    sock.on('data', (chunk: string) => {
      data += chunk;
      const nl = data.indexOf('\n');
      if (nl < 0 && data.length > MAX_RESPONSE_BYTES) {
        clearTimeout(timer);
        sock.destroy();
        reject(new Error(`bart-scanner's answer is longer than ${MAX_RESPONSE_BYTES} bytes`));
        return;
      }
      if (nl >= 0) {
        clearTimeout(timer);
        sock.end();
        try {
          resolvePromise(JSON.parse(data.slice(0, nl)) as ScannerResponse);
        } catch (err) {
          reject(err as Error);
        }
      }
    });
    sock.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** Whether a bart-scanner answers on this configuration's socket (for CHECK-CONFIG). */
export async function isScannerRunning(
  config: BartConfig,
): Promise<{ running: boolean; pid?: number; servers?: string[] }> {
  try {
    const r = await askScanner(config, { op: 'ping' }, 3000);
    if (r.ok && r.op === 'ping') return { running: true, pid: r.pid, servers: r.servers };
    return { running: false };
  } catch {
    return { running: false };
  }
}

/** The LSN range an incremental backup needs MBMs for. */
export interface MbmRange {
  timeline: number;
  /** Parent backup's start (redo) LSN. */
  startLsn: Lsn;
  /** New backup's start (redo) LSN. */
  endLsn: Lsn;
  segmentSize?: number;
}

/**
 * Asks the running bart-scanner to make the MBMs of [startLsn, endLsn) complete for `server`
 * (it scans what is missing now and waits up to `timeoutSec` for WAL still to arrive). With no
 * scanner running, scans the archive on the spot in this process. The result says what is still
 * missing; merge with loadChangeSet() afterwards.
 */
export async function requestMbms(
  config: BartConfig,
  server: ServerConfig,
  range: MbmRange,
  timeoutSec = server.mbmScanTimeout,
): Promise<EnsureMbmsResult & { scannerRunning: boolean }> {
  // The scanner refuses an unbounded range too; failing here names it without a round trip.
  checkRangeBounds(range);
  const req: ScannerRequest = {
    op: 'ensure',
    server: server.name,
    timeline: range.timeline,
    startLsn: formatLsn(range.startLsn),
    endLsn: formatLsn(range.endLsn),
    timeoutSec,
    ...(range.segmentSize ? { segmentSize: range.segmentSize } : {}),
  };
  let r: ScannerResponse | undefined;
  try {
    r = await askScanner(config, req, (timeoutSec + 10) * 1000);
  } catch {
    r = undefined;
  }
  if (r && r.ok && r.op === 'ensure')
    return {
      complete: r.complete,
      missingWal: r.missingWal,
      waiting: r.waiting,
      errors: r.errors,
      written: [],
      scannerRunning: true,
    };
  const archive = openWalArchive(config, server);
  try {
    return { ...(await ensureMbms(archive, range)), scannerRunning: false };
  } finally {
    await archive.close();
  }
}
