// Scanner benchmark worker: a worker thread scanning a segment without writing its MBM.

/**
 * Worker thread for the scanner benchmark: does a scan's whole work on a segment (decode, CRC,
 * MBM build) without writing the MBM, so repeated runs measure the same thing.
 */
import { parentPort } from 'node:worker_threads';
import { errorMessage } from '../util/errors.js';
import { scanWalFile, type ScanBuffers } from './scan-wal-file.js';
import { summarizeScan } from './scan-summary.js';

const buffers: ScanBuffers = {};

parentPort?.on('message', (msg: { path: string }) => {
  scanWalFile(msg.path, { buffers, dryRun: true }).then(
    (r) => parentPort!.postMessage({ ok: true, value: summarizeScan(r) }),
    (err: unknown) => parentPort!.postMessage({ ok: false, error: errorMessage(err) }),
  );
});
