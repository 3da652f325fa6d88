// Hash thread: file checksums of a backup computed beside the main thread, one stream per file, in order.

import { Worker } from 'node:worker_threads';
import type { HashAnswer, HashRequest, HashWorkerData } from '../storage/hash-worker.js';
import type { FileHashName } from '../util/file-hash.js';

/** Bytes per shared slot (a tar unit; larger pieces take several). */
const SLOT_SIZE = 1024 * 1024;
/** Slots: how far the hash thread may fall behind the reader (bounds memory: 32 MiB). */
const SLOTS = 32;

/** One file's checksum being computed by the hash thread. */
export interface StreamHash {
  /**
   * Hands a copy of `data` to the hash thread; the caller keeps its buffer. Synchronous (undefined) when free
   * slots took it all, else a promise that resolves once the rest is handed over (waits for free slots).
   */
  update(data: Uint8Array): Promise<void> | undefined;
  /** The hex digest, once every byte given before this call is hashed. Call once. */
  digest(): Promise<string>;
}

/**
 * A worker thread computing the checksums of a backup's files while the main thread reads, assembles and writes
 * them: each file is a stream of updates ended by a digest request, handled in the order posted, so the bytes of
 * a file are hashed in order. Bytes are copied into slots of memory shared with the thread and reused (a copy
 * into memory already mapped costs a small fraction of hashing; fresh buffers per piece would cost more in page
 * faults than the hash itself). A failure of the thread fails the digests and every later call.
 */
export class HashThread {
  private readonly worker: Worker;
  /**
   * The slots as a Buffer: Buffer#copy into it is a plain memcpy, while Uint8Array#set into shared memory took 3-6
   * times as long here (205 against 62 ms per 512 MiB; the main thread's largest cost in a tar backup).
   */
  private readonly memory: Buffer;
  private readonly freeSlots: number[] = [];
  private slotWaiters: (() => void)[] = [];
  private nextId = 1;
  private readonly digests = new Map<number, { resolve: (hex: string) => void; reject: (err: Error) => void }>();
  private failure: Error | undefined;

  /** @param algorithm the file hash of every stream (`sha256`, `md5`). */
  constructor(algorithm: FileHashName) {
    const slots = new SharedArrayBuffer(SLOTS * SLOT_SIZE);
    this.memory = Buffer.from(slots);
    for (let i = SLOTS - 1; i >= 0; i--) this.freeSlots.push(i);
    this.worker = new Worker(new URL('../storage/hash-worker.js', import.meta.url), {
      workerData: { algorithm, slots, slotSize: SLOT_SIZE } satisfies HashWorkerData,
    });
    this.worker.on('message', (msg: HashAnswer) => {
      if (msg.op === 'hashed') {
        this.freeSlots.push(msg.slot);
        this.wakeOne();
      } else if (msg.op === 'digest') {
        const waiter = this.digests.get(msg.id);
        this.digests.delete(msg.id);
        waiter?.resolve(msg.hex);
      } else this.fail(new Error(`file checksum thread: ${msg.message}`));
    });
    this.worker.on('error', (err) => this.fail(new Error(`file checksum thread: ${err.message}`)));
    this.worker.on('exit', () => this.fail(new Error('file checksum thread ended')));
  }

  /** Starts the checksum of one file. */
  open(): StreamHash {
    const id = this.nextId++;
    return {
      update: (data) => {
        // No promise (and no turn of the event loop) per piece while slots are free: the usual case.
        const done = this.handOver(id, data, 0);
        return done === data.byteLength ? undefined : this.handOverAll(id, data, done);
      },
      digest: () => {
        if (this.failure) return Promise.reject(this.failure);
        return new Promise<string>((resolve, reject) => {
          this.digests.set(id, { resolve, reject });
          this.worker.postMessage({ op: 'digest', id } satisfies HashRequest);
        });
      },
    };
  }

  /** Ends the thread; digests still awaited fail. */
  async close(): Promise<void> {
    await this.worker.terminate();
    this.fail(new Error('file checksum thread closed'));
  }

  /** Copies `data` from `done` on into free slots while there are any; returns how far it got. */
  private handOver(id: number, data: Uint8Array, done: number): number {
    if (this.failure) throw this.failure;
    const source = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    while (done < data.byteLength) {
      const slot = this.freeSlots.pop();
      if (slot === undefined) break;
      const length = Math.min(SLOT_SIZE, data.byteLength - done);
      source.copy(this.memory, slot * SLOT_SIZE, done, done + length);
      this.worker.postMessage({ op: 'update', id, slot, length } satisfies HashRequest);
      done += length;
    }
    return done;
  }

  /** Hands over the rest of `data`, waiting for slots as they come free. */
  private async handOverAll(id: number, data: Uint8Array, done: number): Promise<void> {
    while (done < data.byteLength) {
      const slot = await this.takeSlot();
      this.freeSlots.push(slot);
      done = this.handOver(id, data, done);
    }
  }

  private async takeSlot(): Promise<number> {
    for (;;) {
      if (this.failure) throw this.failure;
      const slot = this.freeSlots.pop();
      if (slot !== undefined) return slot;
      await new Promise<void>((resolve) => this.slotWaiters.push(resolve));
    }
  }

  private wakeOne(): void {
    this.slotWaiters.shift()?.();
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const waiter of this.digests.values()) waiter.reject(err);
    this.digests.clear();
    const waiters = this.slotWaiters;
    this.slotWaiters = [];
    for (const wake of waiters) wake();
  }
}
