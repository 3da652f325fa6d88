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
  /** The plaintext, in an ArrayBuffer of its own: transferred here, sealed in place and sent back. */
  chunk: Uint8Array;
}

/** The sealed chunk: the ciphertext in the task's own buffer (given back, to be reused once written), and the tag. */
export interface SealResult {
  chunk: Uint8Array;
  tag: Uint8Array;
}

parentPort!.on('message', (task: SealTask) => {
  try {
    // The associated data already holds the header bytes: the key is all sealing takes of the header.
    const header = { bytes: Buffer.alloc(0), chunkSize: task.chunk.length, key: Buffer.from(task.key) };
    const tag = sealChunkInPlace(header, Buffer.from(task.aad), task.index, task.last, task.chunk);
    const value: SealResult = { chunk: task.chunk, tag: new Uint8Array(tag) };
    parentPort!.postMessage({ ok: true, value }, [task.chunk.buffer as ArrayBuffer]);
  } catch (err) {
    parentPort!.postMessage({ ok: false, error: (err as Error).message });
  }
});
