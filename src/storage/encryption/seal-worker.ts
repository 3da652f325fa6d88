// Concept: the sealing worker — a worker thread encrypting the chunks of large objects, so that the backup's main thread (reading, hashing, writing) does not do the AES-GCM work too.

import { parentPort } from 'node:worker_threads';
import { sealChunk } from './cipher-format.js';

/** One chunk to seal: the object's key and associated data, its index and whether it is the last. */
export interface SealTask {
  /** The per-object key (HKDF of the master key and the object salt). */
  key: Uint8Array;
  /** The chunk's associated data (header + object name). */
  aad: Uint8Array;
  index: number;
  last: boolean;
  /** The plaintext, in an ArrayBuffer of its own (transferred here, and back with the answer for reuse). */
  plain: Uint8Array;
}

/** The sealed chunk: ciphertext and tag, and the plaintext buffer given back. */
export interface SealResult {
  body: Uint8Array;
  tag: Uint8Array;
  plain: Uint8Array;
}

/** The bytes as a Uint8Array that owns its whole ArrayBuffer (transferable); copied only when they share one. */
function own(bytes: Buffer): Uint8Array {
  if (bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength) return bytes;
  return new Uint8Array(bytes);
}

parentPort!.on('message', (task: SealTask) => {
  try {
    // The associated data already holds the header bytes: the key is all sealChunk takes of the header.
    const header = { bytes: Buffer.alloc(0), chunkSize: task.plain.length, key: Buffer.from(task.key) };
    const [body, tag] = sealChunk(header, Buffer.from(task.aad), task.index, task.last, task.plain);
    const value: SealResult = { body: own(body), tag: new Uint8Array(tag), plain: task.plain };
    parentPort!.postMessage({ ok: true, value }, [value.body.buffer as ArrayBuffer, task.plain.buffer as ArrayBuffer]);
  } catch (err) {
    parentPort!.postMessage({ ok: false, error: (err as Error).message });
  }
});
