// Worker pool: a fixed set of worker threads running one script, tasks queued when all are busy.

import { Worker, type TransferListItem } from 'node:worker_threads';
import { phaseTimes } from './phase-times.js';

interface Pending<R> {
  message: unknown;
  transfer: TransferListItem[];
  resolve: (value: R) => void;
  reject: (err: Error) => void;
}

interface Slot<R> {
  worker: Worker;
  busy?: Pending<R>;
  /** When the busy task was handed over (performance.now()). */
  since?: number;
}

/**
 * A fixed set of worker threads running one script. Each task is a message; the worker answers
 * with `{ ok: true, value }` or `{ ok: false, error }`. Tasks queue when all workers are busy, so
 * the caller bounds memory by bounding how many tasks it has outstanding.
 */
export class WorkerPool<R> {
  private readonly slots: Slot<R>[] = [];
  private readonly queue: Pending<R>[] = [];
  private closed = false;

  /**
   * @param phase when given, each task's time from hand-over to answer (a worker runs one task at a time: its busy
   *   time) is added to this phase of {@link phaseTimes}.
   */
  constructor(script: URL, size: number, phase?: string) {
    for (let i = 0; i < size; i++) {
      const worker = new Worker(script);
      const slot: Slot<R> = { worker };
      worker.on('message', (msg: { ok: boolean; value?: R; error?: string }) => {
        const job = slot.busy;
        slot.busy = undefined;
        if (job && phase !== undefined) phaseTimes.add(phase, performance.now() - slot.since!);
        if (job) {
          if (msg.ok) job.resolve(msg.value as R);
          else job.reject(new Error(msg.error ?? 'worker task failed'));
        }
        this.dispatch();
      });
      worker.on('error', (err) => {
        const job = slot.busy;
        slot.busy = undefined;
        job?.reject(err);
      });
      worker.unref();
      this.slots.push(slot);
    }
  }

  /** Number of worker threads. */
  get size(): number {
    return this.slots.length;
  }

  /** Queues a task; resolves with the worker's answer. */
  run(message: unknown, transfer: TransferListItem[] = []): Promise<R> {
    if (this.closed) return Promise.reject(new Error('worker pool is closed'));
    return new Promise<R>((resolve, reject) => {
      this.queue.push({ message, transfer, resolve, reject });
      this.dispatch();
    });
  }

  private dispatch(): void {
    for (const slot of this.slots) {
      if (slot.busy) continue;
      const job = this.queue.shift();
      if (!job) return;
      slot.busy = job;
      slot.since = performance.now();
      slot.worker.postMessage(job.message, job.transfer);
    }
  }

  /** Stops every worker; queued tasks are rejected. */
  async close(): Promise<void> {
    this.closed = true;
    for (const job of this.queue.splice(0)) job.reject(new Error('worker pool closed'));
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}
