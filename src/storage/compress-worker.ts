// Compression worker: a worker thread compressing the units a backup hands it.

import { parentPort } from 'node:worker_threads';
import { compressChunk, type CompressionMethod } from './compression.js';

/** A chunk to compress; `data` arrives as a transferred buffer and goes back with the answer. */
export interface CompressTask {
  method: CompressionMethod;
  level: number;
  data: Uint8Array;
  /**
   * A buffer given back for reuse (transferred): the unit is written into it when it fits. Fresh memory costs
   * more here than lz4 itself (page faults on every new MiB).
   */
  out?: ArrayBuffer;
  /** Bytes of the buffer made when `out` is absent or too small (so that it can be reused for later units). */
  capacity: number;
}

/** The compressed unit (at the start of its own ArrayBuffer) and the input given back for reuse. */
export interface CompressResult {
  unit: Uint8Array;
  data: Uint8Array;
}

// Runs in a worker thread: compression is CPU-bound, and gzip/zstd at ~0.1-0.8 GB/s per core
// would otherwise cap a backup at one core.
parentPort!.on('message', (task: CompressTask) => {
  try {
    const input = Buffer.from(task.data.buffer, task.data.byteOffset, task.data.byteLength);
    const out = compressChunk(task.method, task.level, input, task.out && new Uint8Array(task.out));
    // In a buffer we can transfer (the codec's buffer may be pooled): lz4 builds its unit in the recycled one
    // itself; other units are copied into it when they fit.
    const target =
      task.out && task.out.byteLength >= out.length ? task.out : new ArrayBuffer(Math.max(out.length, task.capacity));
    const unit = new Uint8Array(target, 0, out.length);
    if (out.buffer !== target) unit.set(out);
    const value: CompressResult = { unit, data: task.data };
    const transfer = [target, task.data.buffer as ArrayBuffer];
    if (task.out && task.out !== target) transfer.push(task.out);
    parentPort!.postMessage({ ok: true, value }, transfer);
  } catch (err) {
    parentPort!.postMessage({ ok: false, error: (err as Error).message });
  }
});
