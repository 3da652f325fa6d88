// Hash worker: a worker thread computing the file checksums (SHA-256, MD5) of a backup's stream of files.

import { parentPort, workerData } from 'node:worker_threads';
import { createFileHash, type FileHash, type FileHashName } from '../util/file-hash.js';

/** A message to the hash worker; the worker handles them in the order they were posted. */
export type HashRequest =
  /** Bytes [0, length) of shared slot `slot` continue stream `id`; the slot is the sender's again after `hashed`. */
  | { op: 'update'; id: number; slot: number; length: number }
  /** Stream `id` is complete: answer with its digest and forget it. */
  | { op: 'digest'; id: number };

/** The worker's answers. */
export type HashAnswer =
  { op: 'hashed'; slot: number } | { op: 'digest'; id: number; hex: string } | { op: 'error'; message: string };

/** What the worker is started with. */
export interface HashWorkerData {
  /** The file-hash name of every stream. */
  algorithm: FileHashName;
  /** The slots the sender copies bytes into, `slotSize` bytes each. */
  slots: SharedArrayBuffer;
  slotSize: number;
}

// Runs in a worker thread: a tar backup's main thread reads, assembles and writes the archive, and a SHA-256 of
// every byte (~1.8 GB/s of one core) would otherwise cap it at the speed of that one core.
const { algorithm, slots, slotSize } = workerData as HashWorkerData;
const memory = new Uint8Array(slots);
const streams = new Map<number, FileHash>();
const streamFor = (id: number): FileHash => {
  let hash = streams.get(id);
  if (!hash) streams.set(id, (hash = createFileHash(algorithm)));
  return hash;
};
parentPort!.on('message', (msg: HashRequest) => {
  try {
    if (msg.op === 'update') {
      const start = msg.slot * slotSize;
      streamFor(msg.id).update(memory.subarray(start, start + msg.length));
      parentPort!.postMessage({ op: 'hashed', slot: msg.slot } satisfies HashAnswer);
    } else {
      const hex = streamFor(msg.id).digest('hex');
      streams.delete(msg.id);
      parentPort!.postMessage({ op: 'digest', id: msg.id, hex } satisfies HashAnswer);
    }
  } catch (err) {
    parentPort!.postMessage({ op: 'error', message: (err as Error).message } satisfies HashAnswer);
  }
});
