// WAL file: a WAL segment (plain, .partial or .gz) loaded into memory, its name and segment size.

import { open } from 'node:fs/promises';
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { createReadStream } from 'node:fs';
import { basename } from 'node:path';
import { parseArchiveFileName, segmentNumberFromName } from './segment-name.js';
import { WalDecodeError } from './decode-error.js';
import { LONG_PAGE_HEADER_SIZE } from './constants.js';
import { DEFAULT_WAL_SEGMENT_SIZE, isValidWalSegmentSize, MAX_WAL_SEGMENT_SIZE } from '../postgres/constants.js';
import { createGunzipStream } from '../util/gunzip.js';
import { createGunzip } from 'node:zlib';

/** The largest WAL segment PostgreSQL allows (initdb --wal-segsize=1024). */

/** A WAL file read into memory (one segment at most). */
export interface LoadedWalFile {
  /** Holds the content in [0, length); may be larger (reused between files). */
  buffer: Buffer;
  length: number;
  /** Segment size from the long page header (0 when the file is too short to have one). */
  segmentSize: number;
  timeline: number;
  /** Segment name (24 hex digits) from the file name. */
  segmentName: string;
  /** The file is gzip-compressed (`.gz`). */
  compressed: boolean;
  /** The file is a `.partial` segment (may end early). */
  partial: boolean;
  /**
   * Set when only the head of the file was read ({@link loadWalFileLazy}): `fill(upTo)` reads on
   * so that buffer[0, upTo) holds the file's bytes (upTo ≤ length); `close()` closes the file.
   */
  lazy?: { fill: (upTo: number) => void; close: () => void };
}

/** Parses a WAL file name (plain, `.partial`, `.gz`, `.partial.gz`); undefined if it is not one. */
export function parseWalFileName(
  path: string,
): { timeline: number; segmentName: string; compressed: boolean; partial: boolean } | undefined {
  let name = basename(path);
  const compressed = name.endsWith('.gz');
  if (compressed) name = name.slice(0, -3);
  const parsed = parseArchiveFileName(name);
  if (!parsed || (parsed.kind !== 'segment' && parsed.kind !== 'partial') || !parsed.segment) return undefined;
  return { timeline: parsed.timeline, segmentName: parsed.segment, compressed, partial: parsed.kind === 'partial' };
}

/** Segment number of a WAL file name for a segment size, as a JS number (exact below 2^53). */
export function walFileSegNo(segmentName: string, segmentSize: number): number {
  return Number(segmentNumberFromName(segmentName, segmentSize));
}

/**
 * Reads a WAL segment file (gunzipping `.gz`) into `reuse` when it is big enough, else into a new
 * buffer. Never reads more than the segment size announced by the file's first page: a larger
 * file is an error, not a memory hazard.
 */
export async function loadWalFile(
  path: string,
  reuse?: Buffer,
  maxBytes = MAX_WAL_SEGMENT_SIZE,
): Promise<LoadedWalFile> {
  const parsed = parseWalFileName(path);
  if (!parsed)
    throw new WalDecodeError(
      path,
      0,
      'not a WAL segment file name (expected 24 hexadecimal digits, optionally .partial and/or .gz)',
    );
  const content = new WalFileContent(reuse, maxBytes);
  if (parsed.compressed) {
    const stream = createReadStream(path).pipe(createGunzipStream());
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) if (content.append(chunk)) break;
    } catch (err) {
      throw new WalDecodeError(path, content.length, `cannot decompress: ${(err as Error).message}`);
    } finally {
      stream.destroy();
    }
  } else {
    // Synchronous reads: one segment from the page cache takes milliseconds, and it spares the
    // libuv thread pool hop per read (scans run on worker threads anyway).
    const fd = openSync(path, 'r');
    try {
      const length = openedLength(fd, content);
      // A file that shrank since fstat simply ends early here: its length is what was read.
      content.length = readUpTo(fd, content.buffer, 0, length);
    } finally {
      closeSync(fd);
    }
  }
  return content.loaded(path, parsed);
}

/**
 * How much a lazy load reads at a time: small enough that the bytes just read are still in the
 * CPU's cache when the decoder reaches them (a 16 MB read lands in DRAM and is read back from it).
 */
export const LAZY_READ_CHUNK = 256 * 1024;

/**
 * Like {@link loadWalFile} for a plain (not gzip-compressed) file, but reads only its first chunk:
 * the decoder reads on as it goes ({@link LoadedWalFile.lazy}), so each piece is decoded while it
 * is still in the CPU's cache. The caller must call `lazy.close()` (also on errors). A `.gz` file
 * is loaded whole, without `lazy`.
 */
export async function loadWalFileLazy(path: string, reuse?: Buffer): Promise<LoadedWalFile> {
  const parsed = parseWalFileName(path);
  if (!parsed || parsed.compressed) return loadWalFile(path, reuse);
  const content = new WalFileContent(reuse, MAX_WAL_SEGMENT_SIZE);
  const fd = openSync(path, 'r');
  try {
    const length = openedLength(fd, content);
    const buffer = content.buffer;
    let have = 0;
    const fill = (upTo: number): void => {
      if (have >= upTo) return;
      have = readUpTo(fd, buffer, have, upTo);
      if (have < upTo)
        throw new WalDecodeError(path, have, `file is shorter (${have} bytes) than when it was opened (${length})`);
    };
    fill(Math.min(length, LAZY_READ_CHUNK));
    content.length = length;
    let closed = false;
    const close = (): void => {
      if (closed) return;
      closed = true;
      closeSync(fd);
    };
    return { ...content.loaded(path, parsed), lazy: { fill, close } };
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}

/** The bytes of an opened plain file that `content` will hold (at most its limit; more marks it overflowed), reserved. */
function openedLength(fd: number, content: WalFileContent): number {
  const size = fstatSync(fd).size;
  if (size > content.limit) content.overflowed = true;
  const length = Math.min(size, content.limit);
  content.reserve(length);
  return length;
}

/** Reads `fd` at [from, upTo) into the same range of `buffer`; returns where it stopped (upTo, or end of file). */
function readUpTo(fd: number, buffer: Buffer, from: number, upTo: number): number {
  let have = from;
  while (have < upTo) {
    const n = readSync(fd, buffer, have, upTo - have, have);
    if (n === 0) break;
    have += n;
  }
  return have;
}

/**
 * One WAL file's bytes gathered into a buffer grown by doubling (the caller's, when big enough), at most `limit`
 * bytes: a caller may ask for just a file's head, but a file larger than the largest segment size is an error,
 * not a memory hazard. Shared by the readers of archive directories and of repository storage.
 */
export class WalFileContent {
  /** Holds the bytes in [0, length). */
  buffer: Buffer;
  length = 0;
  /** More bytes were offered than `limit` takes. */
  overflowed = false;
  /** The most bytes kept: the caller's maximum, never more than the largest segment size. */
  readonly limit: number;

  constructor(reuse: Buffer | undefined, maxBytes: number) {
    this.buffer = reuse ?? Buffer.alloc(0);
    this.limit = Math.min(maxBytes, MAX_WAL_SEGMENT_SIZE);
  }

  /** Makes room for `n` bytes (n ≤ limit), keeping what was gathered. */
  reserve(n: number): void {
    if (n <= this.buffer.length) return;
    let size = Math.max(this.buffer.length * 2, DEFAULT_WAL_SEGMENT_SIZE);
    while (size < n) size *= 2;
    const grown = Buffer.allocUnsafe(Math.min(size, MAX_WAL_SEGMENT_SIZE));
    this.buffer.copy(grown, 0, 0, this.length);
    this.buffer = grown;
  }

  /**
   * Appends what fits of `chunk`; true when the caller can stop reading: the head it asked for is complete, or the
   * file proved larger than any segment (at the largest size, reading goes on until one more byte shows that).
   */
  append(chunk: Buffer): boolean {
    const take = Math.min(chunk.length, this.limit - this.length);
    if (take < chunk.length) this.overflowed = true;
    this.reserve(this.length + take);
    chunk.copy(this.buffer, this.length, 0, take);
    this.length += take;
    return this.overflowed || (this.length >= this.limit && this.limit < MAX_WAL_SEGMENT_SIZE);
  }

  /** The loaded file; throws when it was larger than the largest WAL segment size. */
  loaded(label: string, parsed: NonNullable<ReturnType<typeof parseWalFileName>>): LoadedWalFile {
    if (this.overflowed && this.limit === MAX_WAL_SEGMENT_SIZE)
      throw new WalDecodeError(label, MAX_WAL_SEGMENT_SIZE, 'file is larger than the largest WAL segment size (1 GB)');
    const segmentSize = this.length >= LONG_PAGE_HEADER_SIZE ? this.buffer.readUInt32LE(32) : 0;
    return {
      buffer: this.buffer,
      length: this.length,
      segmentSize,
      timeline: parsed.timeline,
      segmentName: parsed.segmentName,
      compressed: parsed.compressed,
      partial: parsed.partial,
    };
  }
}

/**
 * Segment size announced by a WAL file's long page header (reads only the first bytes; gunzips
 * just enough of a `.gz`). Undefined when the header is missing or implausible.
 */
export async function readSegmentSize(path: string): Promise<number | undefined> {
  let head: Buffer;
  try {
    if (path.endsWith('.gz')) {
      // zlib's small default pieces: only the first few bytes are wanted.
      const stream = createReadStream(path).pipe(createGunzip());
      const chunks: Buffer[] = [];
      let n = 0;
      try {
        for await (const chunk of stream as AsyncIterable<Buffer>) {
          chunks.push(chunk);
          n += chunk.length;
          if (n >= LONG_PAGE_HEADER_SIZE) break;
        }
      } finally {
        stream.destroy();
      }
      head = Buffer.concat(chunks);
    } else {
      const fh = await open(path, 'r');
      try {
        head = Buffer.alloc(LONG_PAGE_HEADER_SIZE);
        const { bytesRead } = await fh.read(head, 0, LONG_PAGE_HEADER_SIZE, 0);
        head = head.subarray(0, bytesRead);
      } finally {
        await fh.close();
      }
    }
  } catch {
    return undefined;
  }
  if (head.length < LONG_PAGE_HEADER_SIZE) return undefined;
  const size = head.readUInt32LE(32);
  if (!isValidWalSegmentSize(size)) return undefined;
  return size;
}
