// Concept: decoded chunks of a stored object for a restore worker — a local file read into recycled buffers and decoded from them, each chunk valid only until the next one is asked for.
//
// A restore worker reading a local file (the POSIX fast path) spent most of its CPU time not on
// decoding but on memory: a fresh 1 MiB buffer per read, the LZ4 block joined into a fresh buffer
// and copied again to prepend its size, zstd output in fresh 128 KiB buffers staged once more before
// the write (fresh memory costs ~1 CPU-s per GiB here in page faults). Here the worker reads with
// positioned reads into buffers it keeps, decodes from them in place, and hands out views of its own
// output buffers. An encrypted POSIX repository's objects take the same decoders: the opener's
// ByteRange reads each cipher chunk whole into a buffer it keeps, authenticates and decrypts it in
// place, and hands out views of it (CipherFileReader). Anything else (S3, gzip) comes as before,
// through the opener's stream and the stream decoder.

import { closeSync, openSync, readSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { Readable } from 'node:stream';
import {
  decodeLz4Block,
  decodeLz4BlockInto,
  decompressStream,
  LZ4_MAGIC,
  LZ4_MAX_BLOCK_SIZE,
  type CompressionMethod,
} from '../storage/compression.js';
import { giveBackBuffer, takeBuffer } from '../util/buffer-shelf.js';
import { isErrnoError } from '../util/errors.js';
import { ObjectMissingError, type ByteRange, type ObjectOpener, type ObjectRef } from './object-source.js';

const require = createRequire(import.meta.url);
const zstd = require('zstd-napi/binding') as {
  DCtx: new () => { decompressStream(dst: Uint8Array, src: Uint8Array): [number, number, number] };
};

/**
 * Decoded bytes of one stored object (or range of it). A chunk handed out is only valid until the
 * next one is asked for: the consumer writes, hashes or copies it before it pulls again (the tar
 * {@link ByteReader} does). `close` releases the file; iterating to the end or returning early does too.
 */
export interface ChunkSource extends AsyncIterable<Buffer> {
  close(): void;
}

/** Bytes read at a time from an uncompressed file (and from a zstd file, in front of the decoder). */
const READ_BYTES = 1024 * 1024;
/** zstd output per call: large enough that file data goes to write() without being staged first. */
const ZSTD_OUT_BYTES = 1024 * 1024;
/**
 * Opens `ref` from byte `start` to `end` (exclusive; the object's end when undefined) and decodes
 * it. With a local path the worker reads the file itself into recycled buffers, as it does an
 * encrypted local object the opener gives a {@link ByteRange} of; otherwise `opener` streams it.
 * Rejects with {@link ObjectMissingError} when the object does not exist.
 */
export async function openChunks(
  opener: ObjectOpener,
  ref: ObjectRef,
  compression: CompressionMethod,
  start = 0,
  end?: number,
): Promise<ChunkSource> {
  // gzip has no in-place decoder here: it streams whatever the source.
  const file = compression === 'gzip' ? undefined : await openRange(opener, ref, start, end);
  if (file === undefined) return streamChunks(decompressStream(await opener.open(ref, start, end), compression));
  const decode = compression === 'lz4' ? lz4Chunks : compression === 'zstd' ? zstdChunks : rawChunks;
  const chunks = decode(file);
  return {
    [Symbol.asyncIterator]: () => chunks,
    close: () => {
      // A generator never started does not run its finally: the file is closed here either way.
      void chunks.return(undefined);
      file.close();
    },
  };
}

/** `ref` as a {@link ByteRange}: its local file, or what the opener reads with positioned reads; else undefined. */
async function openRange(
  opener: ObjectOpener,
  ref: ObjectRef,
  start: number,
  end: number | undefined,
): Promise<ByteRange | undefined> {
  if (ref.path === undefined) return opener.openRange?.(ref, start, end);
  let fd: number;
  try {
    fd = openSync(ref.path, 'r');
  } catch (err) {
    if (isErrnoError(err) && err.code === 'ENOENT') throw new ObjectMissingError(ref);
    throw err;
  }
  return new FileRange(fd, start, end);
}

/** A stream's chunks (they are the stream's own: valid as long as anyone holds them). */
function streamChunks(stream: Readable): ChunkSource {
  return {
    [Symbol.asyncIterator]: () => stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>,
    close: () => stream.destroy(),
  };
}

/** A byte range of an open file, read with positioned reads. */
class FileRange implements ByteRange {
  private fd: number | undefined;

  constructor(
    fd: number,
    private position: number,
    private readonly end: number | undefined,
  ) {
    this.fd = fd;
  }

  /** Reads up to `length` bytes into `buf` at `offset`; 0 at the end of the range. */
  read(buf: Buffer, offset: number, length: number): number {
    const want = this.end === undefined ? length : Math.min(length, this.end - this.position);
    if (want <= 0) return 0;
    if (this.fd === undefined) throw new Error('read after close (internal error)');
    const n = readSync(this.fd, buf, offset, want, this.position);
    this.position += n;
    return n;
  }

  close(): void {
    if (this.fd === undefined) return;
    const fd = this.fd;
    this.fd = undefined;
    closeSync(fd);
  }
}

/** Reads `length` bytes unless the range ends first; returns how many it read. */
function readFully(file: ByteRange, buf: Buffer, offset: number, length: number): number {
  let got = 0;
  while (got < length) {
    const n = file.read(buf, offset + got, length - got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

/**
 * The next `length` bytes: a view of the range's own buffer when they lie in one piece of it (an encrypted object's
 * decrypted chunk), else read into `buf` at `offset`; valid until the next read. Shorter only at the end of the range.
 */
function readBytes(file: ByteRange, buf: Buffer, offset: number, length: number): Buffer {
  if (file.view === undefined) return buf.subarray(offset, offset + readFully(file, buf, offset, length));
  const piece = file.view(length);
  if (piece.length === length || piece.length === 0) return piece;
  piece.copy(buf, offset);
  const rest = readFully(file, buf, offset + piece.length, length - piece.length);
  return buf.subarray(offset, offset + piece.length + rest);
}

async function* rawChunks(file: ByteRange): AsyncGenerator<Buffer> {
  let buf: Buffer | undefined;
  try {
    const view = file.view?.bind(file);
    buf = view ? undefined : takeBuffer(READ_BYTES);
    for (;;) {
      const piece = view ? view(READ_BYTES) : buf!.subarray(0, readFully(file, buf!, 0, READ_BYTES));
      if (piece.length === 0) return;
      yield piece;
    }
  } finally {
    file.close();
    if (buf) giveBackBuffer(buf);
  }
}

async function* zstdChunks(file: ByteRange): AsyncGenerator<Buffer> {
  const kept: Buffer[] = [];
  try {
    const dctx = new zstd.DCtx();
    const view = file.view?.bind(file);
    const input = view ? undefined : take(kept, READ_BYTES);
    const out = take(kept, ZSTD_OUT_BYTES);
    let src: Buffer = Buffer.alloc(0);
    let ended = false;
    // Output the decoder still holds (the last call filled `out`), and whether a frame is open.
    let full = false;
    let inFrame = false;
    for (;;) {
      if (src.length === 0 && !ended) {
        // The decoder consumes its input in place: a view stays valid until the next one is asked for.
        src = view ? view(READ_BYTES) : input!.subarray(0, readFully(file, input!, 0, READ_BYTES));
        if (src.length === 0) ended = true;
      }
      if (src.length === 0 && ended && !full) break;
      const [left, produced, consumed] = dctx.decompressStream(out, src);
      src = src.subarray(consumed);
      // A call that filled `out` may hold more output; one that ended its frame (0) holds none, and a
      // call with no input after that would only ask for the next frame's header.
      full = produced === out.length && left !== 0;
      inFrame = left !== 0;
      if (produced > 0) yield out.subarray(0, produced);
      else if (src.length === 0 && ended) break;
    }
    if (inFrame) throw new Error('truncated zstd stream');
  } finally {
    file.close();
    kept.forEach(giveBackBuffer);
  }
}

/**
 * LZ4 frames (as compressChunk, pg_basebackup or `lz4` write them): each block is read whole into one
 * recycled buffer and decoded into another; a stored block is handed out as it lies there.
 */
async function* lz4Chunks(file: ByteRange): AsyncGenerator<Buffer> {
  const kept: Buffer[] = [];
  try {
    // The largest block and its optional checksum (after 4 bytes the stored block's view starts at).
    const block = take(kept, 4 + LZ4_MAX_BLOCK_SIZE + 4);
    const out = take(kept, LZ4_MAX_BLOCK_SIZE);
    const head = Buffer.allocUnsafe(19);
    const exact = (buf: Buffer, offset: number, n: number) => {
      if (readFully(file, buf, offset, n) !== n) throw new Error('truncated LZ4 stream');
    };
    for (;;) {
      const got = readFully(file, head, 0, 7);
      if (got === 0) return;
      if (got !== 7) throw new Error('truncated LZ4 stream');
      if (head.readUInt32LE(0) !== LZ4_MAGIC) throw new Error('not an LZ4 frame (bad magic number)');
      const flg = head[4]!;
      const extra = ((flg & 0x08) !== 0 ? 8 : 0) + ((flg & 0x01) !== 0 ? 4 : 0);
      if (extra > 0) exact(head, 7, extra);
      // Linked blocks (other tools' frames) may refer to the previous 64 KB of output.
      const linked = (flg & 0x20) === 0;
      const blockChecksum = (flg & 0x10) !== 0;
      const contentChecksum = (flg & 0x04) !== 0;
      let history = Buffer.alloc(0);
      for (;;) {
        exact(head, 0, 4);
        const word = head.readUInt32LE(0);
        if (word === 0) {
          if (contentChecksum) exact(head, 0, 4);
          break;
        }
        const size = word & 0x7fffffff;
        if (size > LZ4_MAX_BLOCK_SIZE) throw new Error(`corrupt LZ4 frame (a block of ${size} bytes)`);
        // A block that lies whole in a decrypted chunk is decoded where it lies, not copied first.
        const sealed = readBytes(file, block, 4, size + (blockChecksum ? 4 : 0));
        if (sealed.length !== size + (blockChecksum ? 4 : 0)) throw new Error('truncated LZ4 stream');
        const body = sealed.subarray(0, size);
        const stored = (word & 0x80000000) !== 0;
        if (linked) {
          const out = stored ? Buffer.from(body) : decodeLz4Block(body, history);
          const keep = Buffer.concat([history, out]);
          history = keep.length > 65536 ? Buffer.from(keep.subarray(keep.length - 65536)) : keep;
          yield out;
        } else if (stored) {
          yield body;
        } else {
          yield out.subarray(0, decodeLz4BlockInto(body, out));
        }
      }
    }
  } finally {
    file.close();
    kept.forEach(giveBackBuffer);
  }
}

/** A buffer from the thread's shelf, noted in `kept` to be given back when the source closes. */
function take(kept: Buffer[], size: number): Buffer {
  const buffer = takeBuffer(size);
  kept.push(buffer);
  return buffer;
}
