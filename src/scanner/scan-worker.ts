// Scanner worker: a worker thread scanning WAL segments into MBMs for the daemon.

/**
 * Worker thread body for parallel scanning: receives `{ path }`, scans that WAL segment (writing
 * its MBM) and answers with a {@link ScanSummary}. Buffers are reused across tasks.
 */
import { parentPort } from 'node:worker_threads';
import { errorMessage, isErrnoError } from '../util/errors.js';
import { scanWalFile, type ScanBuffers } from './scan-wal-file.js';

/** What a scan task reports back to the daemon. */
export type ScanSummary =
  | { status: 'written'; mbmPath: string; records: number; relations: number; events: number }
  | { status: 'waiting'; nextSegment: string }
  /** The file disappeared while being read (e.g. MANAGE compressed or removed it). */
  | { status: 'vanished' };

const buffers: ScanBuffers = {};

parentPort?.on('message', (msg: { path: string }) => {
  scanWalFile(msg.path, { buffers }).then(
    (r) => {
      const value: ScanSummary =
        r.status === 'written'
          ? {
              status: 'written',
              mbmPath: r.mbmPath,
              records: r.map.records,
              relations: r.map.relations.length,
              events: r.map.events.length,
            }
          : { status: 'waiting', nextSegment: r.nextSegment };
      parentPort!.postMessage({ ok: true, value });
    },
    (err: unknown) => {
      if (isErrnoError(err) && err.code === 'ENOENT')
        parentPort!.postMessage({ ok: true, value: { status: 'vanished' } satisfies ScanSummary });
      else parentPort!.postMessage({ ok: false, error: errorMessage(err) });
    },
  );
});
