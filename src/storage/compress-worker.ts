// Compression worker: a worker thread compressing the units a backup hands it.

import { parentPort } from 'node:worker_threads';
import { compressChunk, type CompressionMethod } from './compression.js';

/** A chunk to compress; `data` arrives as a transferred buffer. */
export interface CompressTask {
  method: CompressionMethod;
  level: number;
  data: Uint8Array;
}

// Runs in a worker thread: compression is CPU-bound, and gzip/zstd at ~0.1-0.8 GB/s per core
// would otherwise cap a backup at one core.
parentPort!.on('message', (task: CompressTask) => {
  try {
    const input = Buffer.from(task.data.buffer, task.data.byteOffset, task.data.byteLength);
    const out = compressChunk(task.method, task.level, input);
    // Copy into a fresh ArrayBuffer we can transfer (the codec's buffer may be pooled).
    const copy = new Uint8Array(out.length);
    copy.set(out);
    parentPort!.postMessage({ ok: true, value: copy }, [copy.buffer]);
  } catch (err) {
    parentPort!.postMessage({ ok: false, error: (err as Error).message });
  }
});
