// Restore engine: a restore plan run, directories and links here, file tasks in worker threads.

import { MessageChannel } from 'node:worker_threads';
import type { RestoreTarget } from '../hosts/restore-target.js';
import { CipherStorage, type CipherWorkerSource } from '../storage/encryption/cipher-storage.js';
import type { RepositoryStorage } from '../storage/storage.js';
import { BartError } from '../util/errors.js';
import { log } from '../util/log.js';
import { WorkerPool } from '../util/worker-pool.js';
import { serveObjects } from './object-source.js';
import type { PlanItem } from './plan.js';
import type { RestoreTask, RestoreTaskResult } from './reader.js';
import type { RestoreWorkerMessage } from './worker.js';

/** The restore's worker threads (see {@link startRestoreWorkers}). */
export type RestoreWorkers = WorkerPool<RestoreTaskResult>;

/**
 * Starts `workers` restore worker threads. Each takes a few hundred ms to boot: RESTORE starts them before it reads
 * and checks the catalog (and derives an encrypted repository's key), so that the boot overlaps that work. Whoever
 * starts them closes them, unless {@link extractBackup} takes them over.
 */
export function startRestoreWorkers(workers: number): RestoreWorkers {
  return new WorkerPool<RestoreTaskResult>(new URL('./worker.js', import.meta.url), workers, 'files (workers)');
}

/** Totals of an extraction. */
export interface ExtractResult {
  files: number;
  bytes: number;
}

/**
 * Runs a restore plan: directories and links are made here, in manifest order; file tasks go to
 * worker threads (`workersOrPool`: how many to start, or threads started earlier, which this takes over and closes
 * when done). At most one task per worker is outstanding, so memory stays flat and,
 * after a failure (or `signal`), nothing new starts and only the tasks already running finish
 * before the error is thrown: the caller then removes what was written. `afterTask` runs after each
 * task that succeeded (a crash point of the delta restore's tests). Workers read the stored objects
 * themselves when they have a local path, or are in an encrypted POSIX repository (they decrypt them
 * too); otherwise this thread reads them from `storage` (ranged reads, one per running task, so
 * `workers` of them in flight) and hands them the bytes.
 */
export async function extractBackup(
  plan: AsyncIterable<PlanItem>,
  target: RestoreTarget,
  workersOrPool: number | RestoreWorkers,
  storage: RepositoryStorage,
  signal?: AbortSignal,
  afterTask?: () => void,
): Promise<ExtractResult> {
  const pool = typeof workersOrPool === 'number' ? startRestoreWorkers(workersOrPool) : workersOrPool;
  const workers = pool.size;
  let encrypted: CipherWorkerSource | undefined;
  try {
    // An encrypted POSIX repository is read and decrypted in the workers, like a plain one is read there.
    encrypted = storage instanceof CipherStorage ? await storage.workerSource() : undefined;
  } catch (err) {
    await pool.close();
    throw err;
  }
  const inflight = new Set<Promise<void>>();
  let failure: unknown;
  let files = 0;
  let bytes = 0;
  // WorkerPool unrefs its threads; while we only wait for them, this timer keeps the process alive.
  const keepAlive = setInterval(() => log.debug(`restore: ${files} files, ${bytes} bytes written so far`), 5000);
  try {
    for await (const item of plan) {
      if (signal?.aborted) failure ??= new BartError('RESTORE was interrupted');
      if (failure !== undefined) break;
      if (item.kind === 'dir') {
        await target.makeDir(item.path, item.mode);
      } else if (item.kind === 'symlink') {
        await target.symlink(item.linkTarget, item.path);
      } else {
        const message: RestoreWorkerMessage = { target: target.spec, task: item.task };
        let endServing: (() => void) | undefined;
        if (encrypted) {
          message.encrypted = encrypted;
        } else if (!readsLocally(item.task)) {
          const channel = new MessageChannel();
          endServing = serveObjects(storage, channel.port1);
          message.objects = channel.port2;
        }
        const running: Promise<void> = pool
          .run(message, message.objects ? [message.objects] : [])
          .then(
            (r) => {
              files += r.files;
              bytes += r.bytes;
              afterTask?.();
            },
            (err: unknown) => {
              failure ??= err;
            },
          )
          .finally(() => {
            endServing?.();
            inflight.delete(running);
          });
        inflight.add(running);
        while (inflight.size >= workers) await Promise.race(inflight);
      }
    }
    await Promise.all(inflight);
    if (signal?.aborted) failure ??= new BartError('RESTORE was interrupted');
    if (failure !== undefined) throw failure;
    return { files, bytes };
  } finally {
    clearInterval(keepAlive);
    await Promise.all(inflight);
    await pool.close();
  }
}

/** True when every object the task reads has a local path (the worker reads it itself). */
function readsLocally(task: RestoreTask): boolean {
  return (task.kind === 'tar-range' ? task.artifact.path : task.source.path) !== undefined;
}
