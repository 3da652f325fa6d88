// Concept: positioned reads of a local encrypted object — each chunk read whole into a recycled buffer, authenticated and decrypted there, and handed out as views of it.
//
// A restore worker reading an encrypted POSIX repository through CipherStorage.read got its plaintext as a stream of
// fresh buffers (one per read, one per cipher call) and had to decode it with the stream decoders; fresh memory costs
// here about as much as the AES work (page faults, garbage collections). This reader does what the plain fast path
// does with a local file (src/restore/chunk-source.ts): synchronous positioned reads into one buffer it keeps, the
// chunk decrypted in place, and views of the plaintext passed on. Every check of CipherStorage.read stays: the
// header, the stored size, the tag of every chunk read (which binds its index, whether it is the last, the header
// and the object name), and a short read.

import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { errorMessage, isErrnoError } from '../../util/errors.js';
import { StorageError, StorageNotFoundError, joinKey } from '../storage.js';
import {
  HEADER_BYTES,
  TAG_BYTES,
  associatedData,
  lastChunkIndex,
  openChunkInPlace,
  chunkCutShort,
  chunkNotAuthentic,
  objectShape,
  type ObjectHeader,
} from './cipher-format.js';

/**
 * The chunk buffer of the reader closed last on this thread, for the next one: a plain backup opens one object per
 * file, and a fresh MiB for each would cost more than decrypting a small file.
 */
let spare: Buffer | undefined;

/**
 * The plaintext of bytes [start, end) of one encrypted object in a local file, read in order. A view handed out is
 * valid until the next call; nothing unauthenticated is ever handed out.
 */
export class CipherFileReader {
  private fd: number | undefined;
  /** The sealed chunk read last, decrypted in place once authenticated. */
  private buffer: Buffer;
  /** Next chunk to read. */
  private index: number;
  /** Bytes of the current chunk's plaintext handed out so far (from), and where its part of the range ends (to). */
  private from = 0;
  private to = 0;
  /** A chunk failed: every later read fails the same way (its buffer holds no plaintext). */
  private failure: StorageError | undefined;
  /** Last chunk of the range (one before the first when the range is empty). */
  private readonly final: number;

  private constructor(
    fd: number,
    private readonly key: string,
    private readonly name: string,
    private readonly header: ObjectHeader,
    private readonly aad: Buffer,
    private readonly plain: number,
    private readonly start: number,
    private readonly end: number,
  ) {
    this.fd = fd;
    const size = header.chunkSize;
    this.index = Math.floor(start / size);
    // An empty range of a non-empty object reads nothing; an empty object's one (empty) chunk is still checked.
    this.final = end === start && plain > 0 ? this.index - 1 : end === start ? 0 : Math.floor((end - 1) / size);
    const want = Math.min(size, plain - this.index * size) + TAG_BYTES;
    const take = spare !== undefined && spare.length >= want ? spare : undefined;
    if (take) spare = undefined;
    this.buffer = take ?? Buffer.allocUnsafeSlow(Math.max(want, 0));
  }

  /**
   * Opens `path`, the stored object `key` of the repository at `location` (for messages and the associated data),
   * with the repository's master key; reads [start, end) of its plaintext (clamped to the object). Throws
   * StorageNotFoundError when there is no such file, a StorageError naming the object when its header or size is
   * not one of an encrypted object.
   */
  static open(path: string, location: string, key: string, master: Buffer, start = 0, end?: number): CipherFileReader {
    const name = joinKey(location, key);
    const damaged = (what: string) => new StorageError(`${name}: ${what}`, key);
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (err) {
      if (isErrnoError(err) && (err.code === 'ENOENT' || err.code === 'ENOTDIR'))
        throw new StorageNotFoundError(location, key);
      throw damaged(`cannot be read: ${errorMessage(err)}`);
    }
    try {
      const stored = fstatSync(fd).size;
      const head = Buffer.alloc(HEADER_BYTES);
      const got = readSync(fd, head, 0, Math.min(HEADER_BYTES, stored), 0);
      const checked = objectShape(master, head.subarray(0, got), stored);
      if (typeof checked === 'string') throw damaged(checked);
      const { header, plain } = checked;
      const from = Math.max(0, Math.min(start, plain));
      const to = Math.max(from, Math.min(end ?? plain, plain));
      return new CipherFileReader(fd, key, name, header, associatedData(header, key), plain, from, to);
    } catch (err) {
      closeSync(fd);
      if (err instanceof StorageError) throw err;
      throw damaged(`cannot be read: ${errorMessage(err)}`);
    }
  }

  /**
   * The next plaintext bytes of the range, at most `max` (at least 1 while any are left), as a view of this reader's
   * buffer: valid until the next call. Empty at the end of the range.
   */
  view(max: number): Buffer {
    if (this.from === this.to && !this.next()) return this.buffer.subarray(0, 0);
    const n = Math.min(max, this.to - this.from);
    const piece = this.buffer.subarray(this.from, this.from + n);
    this.from += n;
    return piece;
  }

  /** Copies up to `length` next plaintext bytes into `buf` at `offset`; 0 at the end of the range. */
  read(buf: Buffer, offset: number, length: number): number {
    let got = 0;
    while (got < length) {
      const piece = this.view(length - got);
      if (piece.length === 0) break;
      piece.copy(buf, offset + got);
      got += piece.length;
    }
    return got;
  }

  /** Releases the file (and the buffer, for the next reader of this thread). */
  close(): void {
    if (this.fd === undefined) return;
    const fd = this.fd;
    this.fd = undefined;
    if (spare === undefined || spare.length < this.buffer.length) spare = this.buffer;
    closeSync(fd);
  }

  /** Reads, authenticates and decrypts the next chunk of the range; false when the range is over. */
  private next(): boolean {
    if (this.failure) throw this.failure;
    while (this.index <= this.final) {
      const i = this.index++;
      const size = this.header.chunkSize;
      const last = i === lastChunkIndex(this.plain, size);
      const body = last ? this.plain - i * size : size;
      const sealed = body + TAG_BYTES;
      if (this.buffer.length < sealed) this.buffer = Buffer.allocUnsafeSlow(sealed);
      const chunk = this.buffer.subarray(0, sealed);
      const got = this.readAt(chunk, HEADER_BYTES + i * (size + TAG_BYTES));
      if (got < sealed) return this.fail(chunkCutShort(i));
      if (!openChunkInPlace(this.header, this.aad, i, last, chunk)) return this.fail(chunkNotAuthentic(i));
      // Only the requested range of the chunk's plaintext is handed out.
      this.from = Math.max(0, this.start - i * size);
      this.to = Math.min(body, this.end - i * size);
      if (this.to > this.from) return true;
    }
    return false;
  }

  /** Fills `chunk` from `position`; fewer bytes only when the file ends first. */
  private readAt(chunk: Buffer, position: number): number {
    if (this.fd === undefined) throw new Error('read after close (internal error)');
    let got = 0;
    try {
      while (got < chunk.length) {
        const n = readSync(this.fd, chunk, got, chunk.length - got, position + got);
        if (n === 0) break;
        got += n;
      }
    } catch (err) {
      this.failure = new StorageError(`${this.name}: cannot be read: ${errorMessage(err)}`, this.key);
      throw this.failure;
    }
    return got;
  }

  private fail(what: string): never {
    this.from = this.to = 0;
    this.failure = new StorageError(`${this.name}: ${what}`, this.key);
    throw this.failure;
  }
}
