// Compression: gzip, lz4 and zstd chunks compressed, streams decompressed, incompressible data spotted.

import { createReadStream } from 'node:fs';
import { createRequire } from 'node:module';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { constants as zc, gzipSync } from 'node:zlib';
import { createGunzipStream } from '../util/gunzip.js';

const require = createRequire(import.meta.url);
const lz4 = require('lz4-napi') as { compressSync(data: Buffer): Buffer; uncompressSync(data: Uint8Array): Buffer };
const zstd = require('zstd-napi') as {
  compress(data: Uint8Array, params?: { compressionLevel?: number }): Buffer;
  DecompressStream: new () => Transform;
};
const xxhash = require('@node-rs/xxhash') as { xxh32(data: Uint8Array, seed?: number): number };

/** Compression methods pgbart writes. */
export type CompressionMethod = 'none' | 'gzip' | 'lz4' | 'zstd';

/** File name suffix of a compression method (`''` for none). */
export function compressionExtension(method: CompressionMethod): string {
  return { none: '', gzip: '.gz', lz4: '.lz4', zstd: '.zst' }[method];
}

/** Default level when none is given: gzip 6 (as BART/gzip), zstd 3, lz4 has none. */
export function defaultCompressionLevel(method: CompressionMethod): number {
  return method === 'gzip' ? 6 : method === 'zstd' ? 3 : 0;
}

/** Largest chunk we compress as one unit (one gzip member / lz4 frame / zstd frame). */
export const MAX_CHUNK = 4 * 1024 * 1024;

/** The largest block an LZ4 frame may hold (its block-maximum-size field allows 64 KiB to 4 MiB). */
export const LZ4_MAX_BLOCK_SIZE = 4 * 1024 * 1024;

/** First four bytes of an LZ4 frame. */
export const LZ4_MAGIC = 0x184d2204;
// FLG: version 01, independent blocks, no block/content checksum, no content size. BD: 4 MB blocks.
const LZ4_FLG = 0x60;
const LZ4_BD = 0x70;
const LZ4_HEADER = (() => {
  const h = Buffer.alloc(7);
  h.writeUInt32LE(LZ4_MAGIC, 0);
  h[4] = LZ4_FLG;
  h[5] = LZ4_BD;
  h[6] = (xxhash.xxh32(h.subarray(4, 6), 0) >>> 8) & 0xff;
  return h;
})();

/**
 * Compresses one chunk (at most {@link MAX_CHUNK} bytes) into a self-contained unit: a gzip member,
 * a standard LZ4 frame or a zstd frame. Concatenated units form a valid stream for the usual tools
 * (`gzip -d`, `lz4 -d`, `zstd -d`), and each unit can be decoded alone, which lets restore start
 * anywhere a unit starts. An lz4 unit is built in `out` when it has room (the result then lies at its start).
 */
export function compressChunk(method: CompressionMethod, level: number, data: Buffer, out?: Uint8Array): Buffer {
  if (method !== 'none' && looksIncompressible(data))
    return method === 'lz4' ? lz4Frame(data, true, out) : storeChunk(method, data);
  switch (method) {
    case 'none':
      return data;
    case 'gzip':
      return gzipSync(data, { level, strategy: zc.Z_DEFAULT_STRATEGY });
    case 'zstd':
      return zstd.compress(data, { compressionLevel: level });
    case 'lz4': {
      if (data.length === 0) return Buffer.concat([LZ4_HEADER, Buffer.alloc(4)]);
      // lz4-napi block mode is fast on incompressible data (frame mode is not); we frame it ourselves.
      const block = lz4.compressSync(data).subarray(4); // drop lz4_flex's size prefix
      const stored = block.length >= data.length;
      return lz4Frame(stored ? data : block, stored, out);
    }
  }
}

/**
 * An LZ4 frame of one block, `payload` (stored raw when `stored`), built at the start of `out` when it has room
 * (a buffer the caller reuses: a fresh MiB costs about as much as compressing it), else in a new buffer.
 */
function lz4Frame(payload: Uint8Array, stored: boolean, out?: Uint8Array): Buffer {
  const size = LZ4_HEADER.length + 4 + payload.length + 4;
  const frame =
    out && out.byteLength >= size ? Buffer.from(out.buffer, out.byteOffset, size) : Buffer.allocUnsafe(size);
  LZ4_HEADER.copy(frame, 0);
  frame.writeUInt32LE((payload.length | (stored ? 0x80000000 : 0)) >>> 0, 7);
  frame.set(payload, 11);
  frame.writeUInt32LE(0, 11 + payload.length);
  return frame;
}

/** A Transform that decodes a stream of concatenated units of `method` (any frame/member count). */
export function createDecompressor(method: CompressionMethod): Transform {
  switch (method) {
    case 'none':
      return new Transform({ transform: (chunk: Buffer, _e, cb) => cb(null, chunk) });
    case 'gzip':
      return createGunzipStream();
    case 'zstd':
      return new zstd.DecompressStream();
    case 'lz4':
      return new Lz4FrameDecoder();
  }
}

/**
 * Bytes read from a stored file at a time. Decoders turn each input chunk into up to ~20 times as much
 * output before backpressure can act, so for compressed files the input chunk bounds memory (measured:
 * 1 MiB chunks took zstd restores to 300+ MB RSS, 64 KiB keeps them near 120 MB, and is no slower).
 */
const DECODE_INPUT_CHUNK: Record<CompressionMethod, number> = {
  none: 1024 * 1024,
  lz4: 64 * 1024,
  gzip: 128 * 1024,
  zstd: 64 * 1024,
};

/**
 * Opens a stored file from byte `start` and decodes it (read in chunks sized to bound the decoder's
 * memory); errors of the raw stream surface on the decoded one, and destroying that closes the file.
 */
export function openDecompressed(path: string, compression: CompressionMethod, start = 0): Readable {
  return decompressStream(
    createReadStream(path, { start, highWaterMark: DECODE_INPUT_CHUNK[compression] }),
    compression,
  );
}

/**
 * Decodes a raw stream (a stored object read through the repository storage), feeding the decoder
 * input pieces of at most the size that bounds its memory (a store may deliver larger chunks);
 * errors of the raw stream surface on the decoded one, and destroying that destroys the raw one.
 */
export function decompressStream(raw: Readable, compression: CompressionMethod): Readable {
  if (compression === 'none') return raw;
  const limit = DECODE_INPUT_CHUNK[compression];
  const splitter = new Transform({
    transform(chunk: Buffer, _e, cb) {
      for (let at = 0; at < chunk.length; at += limit) this.push(chunk.subarray(at, at + limit));
      cb();
    },
    // One piece at a time, so the decoder's backpressure reaches the raw stream.
    readableHighWaterMark: limit,
  });
  const decoder = createDecompressor(compression);
  raw.on('error', (err) => decoder.destroy(err));
  decoder.on('close', () => raw.destroy());
  return raw.pipe(splitter).pipe(decoder);
}

/** Streaming decoder for LZ4 frames (independent blocks, as {@link compressChunk} writes them and `lz4` does by default). */
class Lz4FrameDecoder extends Transform {
  private pending: Buffer = Buffer.alloc(0);
  /**
   * Input not yet joined to `pending`. A block usually spans many input chunks; joining each chunk
   * as it comes copied a 1 MiB block ~8 times over (64 KiB chunks), so they are joined once, when a
   * block is complete.
   */
  private queued: Buffer[] = [];
  private queuedBytes = 0;
  private inFrame = false;
  private blockChecksum = false;
  /** Blocks that may refer to the previous 64 KB of output (pg_basebackup and `lz4` write these). */
  private linked = false;
  private history: Buffer = Buffer.alloc(0);
  private contentChecksum = false;

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.queued.push(chunk);
    this.queuedBytes += chunk.length;
    try {
      this.drain();
      cb();
    } catch (err) {
      cb(err as Error);
    }
  }

  override _flush(cb: TransformCallback): void {
    if (this.pending.length !== 0 || this.queuedBytes !== 0 || this.inFrame) cb(new Error('truncated LZ4 stream'));
    else cb();
  }

  /** True when at least `n` bytes are available, joined in `pending`. */
  private have(n: number): boolean {
    if (this.pending.length >= n) return true;
    if (this.pending.length + this.queuedBytes < n) return false;
    this.pending = Buffer.concat([this.pending, ...this.queued]);
    this.queued = [];
    this.queuedBytes = 0;
    return true;
  }

  private drain(): void {
    for (;;) {
      if (!this.inFrame) {
        if (!this.have(7)) return;
        const buf = this.pending;
        if (buf.readUInt32LE(0) !== LZ4_MAGIC) throw new Error('not an LZ4 frame (bad magic number)');
        const flg = buf[4]!;
        const hasContentSize = (flg & 0x08) !== 0;
        const hasDictId = (flg & 0x01) !== 0;
        const headerLen = 7 + (hasContentSize ? 8 : 0) + (hasDictId ? 4 : 0);
        if (!this.have(headerLen)) return;
        this.linked = (flg & 0x20) === 0;
        this.history = Buffer.alloc(0);
        this.blockChecksum = (flg & 0x10) !== 0;
        this.contentChecksum = (flg & 0x04) !== 0;
        this.pending = this.pending.subarray(headerLen);
        this.inFrame = true;
        continue;
      }
      if (!this.have(4)) return;
      const word = this.pending.readUInt32LE(0);
      if (word === 0) {
        const tail = 4 + (this.contentChecksum ? 4 : 0);
        if (!this.have(tail)) return;
        this.pending = this.pending.subarray(tail);
        this.inFrame = false;
        continue;
      }
      const size = word & 0x7fffffff;
      const total = 4 + size + (this.blockChecksum ? 4 : 0);
      if (!this.have(total)) return;
      const buf = this.pending;
      const body = buf.subarray(4, 4 + size);
      if (this.linked) {
        const out = word & 0x80000000 ? Buffer.from(body) : decodeLz4Block(body, this.history);
        this.push(out);
        const keep = Buffer.concat([this.history, out]);
        this.history = keep.length > 65536 ? Buffer.from(keep.subarray(keep.length - 65536)) : keep;
      } else if (word & 0x80000000) {
        // A stored block: pass it on as it is (nothing writes into pending's memory later).
        this.push(body);
      } else {
        const withSize = Buffer.allocUnsafe(size + 4);
        withSize.writeUInt32LE(MAX_CHUNK, 0);
        body.copy(withSize, 4);
        this.push(lz4.uncompressSync(withSize));
      }
      this.pending = buf.subarray(total);
    }
  }
}

/**
 * Decodes one LZ4 block whose matches may reach into `dict` (the previous output of a frame with
 * linked blocks, at most 64 KiB); only used for frames other tools wrote. A block decodes to at most
 * the frame's 4 MiB block size.
 */
export function decodeLz4Block(src: Buffer, dict: Buffer): Buffer {
  const out = Buffer.allocUnsafe(dict.length + LZ4_MAX_BLOCK_SIZE);
  dict.copy(out, 0);
  const end = decodeLz4BlockInto(src, out, dict.length);
  return Buffer.from(out.subarray(dict.length, end));
}

/** A corrupt block: the error every bounds check below throws. */
function corruptLz4(): Error {
  return new Error('corrupt LZ4 block');
}

/**
 * Decodes one LZ4 block into `out` from offset `start`, returns where the output ends. `out[0, start)` is the
 * dictionary matches may reach into (the previous output of a frame with linked blocks; 0 for independent blocks).
 * Ours rather than lz4-napi's, which returns a fresh (zeroed) 4 MiB buffer per block and takes no dictionary:
 * measured here on pgbench data, that cost 2-4 times the CPU of this loop writing into a recycled buffer. Every
 * read and write is bounds-checked: a damaged block throws, never reads or writes outside its buffers.
 */
export function decodeLz4BlockInto(src: Buffer, out: Buffer, start = 0): number {
  const end = src.length;
  const cap = out.length;
  let ip = 0;
  let op = start;
  while (ip < end) {
    const token = src[ip++]!;
    let literals = token >>> 4;
    if (literals === 15) {
      let b: number;
      do {
        if (ip >= end) throw corruptLz4();
        b = src[ip++]!;
        literals += b;
      } while (b === 255);
    }
    if (literals > 0) {
      if (literals > end - ip || literals > cap - op) throw corruptLz4();
      if (literals < 16) {
        for (let i = 0; i < literals; i++) out[op + i] = src[ip + i]!;
      } else {
        src.copy(out, op, ip, ip + literals);
      }
      op += literals;
      ip += literals;
    }
    if (ip === end) break; // the last sequence has literals only
    if (end - ip < 2) throw corruptLz4();
    const offset = src[ip]! | (src[ip + 1]! << 8);
    ip += 2;
    let length = token & 15;
    if (length === 15) {
      let b: number;
      do {
        if (ip >= end) throw corruptLz4();
        b = src[ip++]!;
        length += b;
      } while (b === 255);
    }
    length += 4;
    if (offset === 0 || offset > op || length > cap - op) throw corruptLz4();
    let from = op - offset;
    if (offset >= length && length >= 32) {
      out.copy(out, op, from, from + length);
      op += length;
    } else {
      // Short, or overlapping its own output (a repeated pattern): byte by byte, in order.
      const stop = op + length;
      while (op < stop) out[op++] = out[from++]!;
    }
  }
  return op;
}

/**
 * True when a chunk is almost surely incompressible (random, encrypted or already compressed data):
 * the byte entropy of three 4 KiB samples is near 8 bits. Compressors crawl over such data
 * (lz4_flex and zstd at ~0.2 GB/s, gzip far slower) only to store it as it is, so we store it
 * at once, in the method's own "stored" form.
 */
export function looksIncompressible(data: Buffer): boolean {
  const SAMPLE = 4096;
  if (data.length < 16 * SAMPLE) return false;
  const counts = new Uint32Array(256);
  for (const start of [0, (data.length >> 1) - (SAMPLE >> 1), data.length - SAMPLE]) {
    for (let i = start; i < start + SAMPLE; i++) counts[data[i]!]!++;
  }
  const total = 3 * SAMPLE;
  let entropy = 0;
  for (let b = 0; b < 256; b++) {
    const c = counts[b]!;
    if (c > 0) entropy -= (c / total) * Math.log2(c / total);
  }
  return entropy > 7.9;
}

/** The chunk as a valid unit of `method` that stores the bytes uncompressed. */
function storeChunk(method: 'gzip' | 'zstd', data: Buffer): Buffer {
  if (method === 'gzip') return gzipSync(data, { level: 0 });
  // zstd frame: magic, header descriptor 0 (no content size, no checksum), window 128 KiB, raw blocks.
  const BLOCK = 128 * 1024;
  const blocks = Math.max(1, Math.ceil(data.length / BLOCK));
  const out = Buffer.allocUnsafe(6 + blocks * 3 + data.length);
  out.writeUInt32LE(0xfd2fb528, 0);
  out[4] = 0x00;
  out[5] = 0x38;
  let at = 6;
  for (let i = 0; i < blocks; i++) {
    const size = Math.min(BLOCK, data.length - i * BLOCK);
    const header = (size << 3) | (i === blocks - 1 ? 1 : 0); // block type 0 = raw
    out[at] = header & 0xff;
    out[at + 1] = (header >> 8) & 0xff;
    out[at + 2] = (header >> 16) & 0xff;
    data.copy(out, at + 3, i * BLOCK, i * BLOCK + size);
    at += 3 + size;
  }
  return out;
}
