// Concept: the sealing worker — a worker thread encrypting the chunks of large objects, so that the backup's main thread (reading, hashing, writing) does not do the AES-GCM work too.

import { parentPort } from 'node:worker_threads';
import { sealChunkInPlace } from './cipher-format.js';

/** One chunk to seal: the object's key and associated data, its index and whether it is the last. */
export interface SealTask {
  /** The per-object key (HKDF of the master key and the object salt). */
  key: Uint8Array;
  /** The chunk's associated data (header + object name). */
  aad: Uint8Array;
  index: number;
  last: boolean;
  /**
   * The plaintext (its first `length` bytes) with room for the tag after it, in an ArrayBuffer of its own:
   * transferred here, sealed in place, the tag put after the ciphertext, and sent back — the chunk as stored.
   */
  chunk: Uint8Array;
  /** Plaintext bytes in `chunk`. */
  length: number;
}

/** The sealed chunk: ciphertext and tag in the task's own buffer (given back, to be reused once written). */
export interface SealResult {
  chunk: Uint8Array;
}

parentPort!.on('message', (task: SealTask) => {
  try {
    // The associated data already holds the header bytes: the key is all sealing takes of the header.
    const header = { bytes: Buffer.alloc(0), chunkSize: task.length, key: Buffer.from(task.key) };
    const tag = sealChunkInPlace(
      header,
      Buffer.from(task.aad),
      task.index,
      task.last,
      task.chunk.subarray(0, task.length),
    );
    task.chunk.set(tag, task.length);
    const value: SealResult = { chunk: task.chunk };
    parentPort!.postMessage({ ok: true, value }, [task.chunk.buffer as ArrayBuffer]);
  } catch (err) {
    parentPort!.postMessage({ ok: false, error: (err as Error).message });
  }
});
