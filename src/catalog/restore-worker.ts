import { parentPort } from 'node:worker_threads';
import { restoreTargetFromSpec } from '../hosts/restore-target-local.js';
import type { RestoreTargetSpec } from '../hosts/restore-target.js';
import { runRestoreTask, type RestoreTask } from './restore-reader.js';

/** What the restore engine posts to a worker. */
export interface RestoreWorkerMessage {
  target: RestoreTargetSpec;
  task: RestoreTask;
}

// Runs in a worker thread: decoding, hashing and writing are CPU-bound, so `-w N` workers use N cores.
parentPort!.on('message', (msg: RestoreWorkerMessage) => {
  runRestoreTask(msg.task, restoreTargetFromSpec(msg.target)).then(
    (value) => parentPort!.postMessage({ ok: true, value }),
    (err: unknown) => parentPort!.postMessage({ ok: false, error: err instanceof Error ? err.message : String(err) }),
  );
});
