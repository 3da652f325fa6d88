import { createRequire } from 'node:module';
import { Transform, type TransformCallback } from 'node:stream';
import { constants as zc, createGunzip, gzipSync } from 'node:zlib';

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

const LZ4_MAGIC = 0x184d2204;
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
 * anywhere a unit starts.
 */
export function compressChunk(method: CompressionMethod, level: number, data: Buffer): Buffer {
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
      const payload = stored ? data : block;
      const out = Buffer.allocUnsafe(LZ4_HEADER.length + 4 + payload.length + 4);
      LZ4_HEADER.copy(out, 0);
      out.writeUInt32LE((payload.length | (stored ? 0x80000000 : 0)) >>> 0, 7);
      payload.copy(out, 11);
      out.writeUInt32LE(0, 11 + payload.length);
      return out;
    }
  }
}

/** A Transform that decodes a stream of concatenated units of `method` (any frame/member count). */
export function createDecompressor(method: CompressionMethod): Transform {
  switch (method) {
    case 'none':
      return new Transform({ transform: (chunk: Buffer, _e, cb) => cb(null, chunk) });
    case 'gzip':
      return createGunzip();
    case 'zstd':
      return new zstd.DecompressStream();
    case 'lz4':
      return new Lz4FrameDecoder();
  }
}

/** Streaming decoder for LZ4 frames (independent blocks, as {@link compressChunk} writes them and `lz4` does by default). */
class Lz4FrameDecoder extends Transform {
  private pending: Buffer = Buffer.alloc(0);
  private inFrame = false;
  private blockChecksum = false;
  private contentChecksum = false;

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    try {
      this.drain();
      cb();
    } catch (err) {
      cb(err as Error);
    }
  }

  override _flush(cb: TransformCallback): void {
    if (this.pending.length !== 0 || this.inFrame) cb(new Error('truncated LZ4 stream'));
    else cb();
  }

  private drain(): void {
    for (;;) {
      const buf = this.pending;
      if (!this.inFrame) {
        if (buf.length < 7) return;
        if (buf.readUInt32LE(0) !== LZ4_MAGIC) throw new Error('not an LZ4 frame (bad magic number)');
        const flg = buf[4]!;
        const hasContentSize = (flg & 0x08) !== 0;
        const hasDictId = (flg & 0x01) !== 0;
        const headerLen = 7 + (hasContentSize ? 8 : 0) + (hasDictId ? 4 : 0);
        if (buf.length < headerLen) return;
        if ((flg & 0x20) === 0) throw new Error('LZ4 frames with linked blocks are not supported');
        this.blockChecksum = (flg & 0x10) !== 0;
        this.contentChecksum = (flg & 0x04) !== 0;
        this.pending = buf.subarray(headerLen);
        this.inFrame = true;
        continue;
      }
      if (buf.length < 4) return;
      const word = buf.readUInt32LE(0);
      if (word === 0) {
        const tail = 4 + (this.contentChecksum ? 4 : 0);
        if (buf.length < tail) return;
        this.pending = buf.subarray(tail);
        this.inFrame = false;
        continue;
      }
      const size = word & 0x7fffffff;
      const total = 4 + size + (this.blockChecksum ? 4 : 0);
      if (buf.length < total) return;
      const body = buf.subarray(4, 4 + size);
      if (word & 0x80000000) {
        this.push(Buffer.from(body));
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
