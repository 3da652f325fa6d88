/**
 * Messages on the bart-scanner socket: one JSON object per line each way.
 * `ping` answers whether the scanner runs; `ensure` asks it to make the MBMs of an LSN range
 * complete (scanning what is missing, waiting for WAL still to arrive) within a timeout.
 */
export type ScannerRequest =
  | { op: 'ping' }
  | { op: 'ensure'; server: string; timeline: number; startLsn: string; endLsn: string; timeoutSec: number; segmentSize?: number };

/** Answer to a {@link ScannerRequest}. */
export type ScannerResponse =
  | { ok: true; op: 'ping'; pid: number; servers: string[] }
  | { ok: true; op: 'ensure'; complete: boolean; missingWal: string[]; waiting: string[]; errors: Array<{ segment: string; message: string }> }
  | { ok: false; error: string };
