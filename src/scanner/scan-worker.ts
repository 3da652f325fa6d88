// Scanner worker: a worker thread scanning WAL segments into MBMs for the daemon.

/**
 * Worker thread body for parallel scanning: receives `{ path }`, scans that WAL segment (writing
 * its MBM) and answers with a {@link ScanSummary}. Buffers are reused across tasks.
 */
import { parentPort } from 'node:worker_threads';
import { errorMessage } from '../util/errors.js';
import type { ScanBuffers } from './scan-wal-file.js';
import { scanToSummary, type ScanSummary } from './scan-summary.js';

const buffers: ScanBuffers = {};

parentPort?.on('message', (msg: { path: string }) => {
  scanToSummary(msg.path, { buffers }).then(
    (value: ScanSummary) => parentPort!.postMessage({ ok: true, value }),
    (err: unknown) => parentPort!.postMessage({ ok: false, error: errorMessage(err) }),
  );
});
