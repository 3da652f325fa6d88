// Restore worker: a worker thread running restore tasks against the restore target it is handed.

import { parentPort, type MessagePort } from 'node:worker_threads';
import { restoreTargetFromSpec } from '../hosts/restore-target-for-spec.js';
import type { RestoreTargetSpec } from '../hosts/restore-target.js';
import { openWorkerSource, type CipherWorkerSource } from '../storage/encryption/cipher-storage.js';
import { cipherOpener, localOpener, PortOpener, preferLocal } from './object-source.js';
import { runRestoreTask, type RestoreTask } from './reader.js';

/** What the restore engine posts to a worker. */
export interface RestoreWorkerMessage {
  target: RestoreTargetSpec;
  task: RestoreTask;
  /**
   * Where to ask for the task's stored objects that have no local path (a storage without one,
   * S3): the engine's end of it reads them through the repository storage.
   */
  objects?: MessagePort;
  /**
   * An encrypted POSIX repository: the worker reads the ciphertext itself with positioned reads and decrypts it
   * here in place, beside decompression (the main thread would otherwise decrypt everything for every worker).
   */
  encrypted?: CipherWorkerSource;
}

// Runs in a worker thread: decoding, hashing and writing are CPU-bound, so `-w N` workers use N cores.
parentPort!.on('message', (msg: RestoreWorkerMessage) => {
  const target = restoreTargetFromSpec(msg.target);
  const remote = msg.objects ? new PortOpener(msg.objects) : undefined;
  const opener = msg.encrypted
    ? cipherOpener(openWorkerSource(msg.encrypted))
    : remote
      ? preferLocal(remote)
      : localOpener;
  // A remote target streams a task's files over one connection; close() completes it (and reports
  // remote failures) before the task counts as done.
  runRestoreTask(msg.task, target, opener)
    .then(
      async (value) => {
        await target.close?.();
        return value;
      },
      async (err: unknown) => {
        await target.close?.().catch(() => undefined);
        throw err;
      },
    )
    .finally(() => remote?.close())
    .then(
      (value) => parentPort!.postMessage({ ok: true, value }),
      (err: unknown) => parentPort!.postMessage({ ok: false, error: err instanceof Error ? err.message : String(err) }),
    );
});
