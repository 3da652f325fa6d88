// File copy worker: a worker thread copying one local file into the repository, hashed and compressed.

import { closeSync, openSync, readSync } from 'node:fs';
import { createFileHash, type FileHashName } from '../util/file-hash.js';
import { parentPort } from 'node:worker_threads';
import { PAGE_SIZE, PageVerifier } from '../postgres/page-checksum.js';
import { FlushBehind } from '../util/flush-behind.js';
import { compressChunk, type CompressionMethod } from './compression.js';
import { writeAllSync } from '../util/write-all.js';
import { DirectAppender } from '../util/direct-writer.js';

/** Copy one file of this host into the repository, hashing (and compressing) it on the way. */
export interface FileCopyTask {
  source: string;
  target: string;
  /** Bytes to store: the size seen when the file was listed (a file that shrank is zero-padded). */
  size: number;
  method: CompressionMethod;
  level: number;
  /** File-hash name (crc32c, sha256, md5) or undefined for none. */
  hash?: FileHashName;
  chunk: number;
  /**
   * Verify the pages of this relation file against their data checksums: `firstBlock` is the
   * relation block number of its first page, `startLsn` the backup's start (later pages not checked).
   */
  pages?: { firstBlock: number; startLsn: bigint };
}

/** What a copy produced. */
export interface FileCopyResult {
  checksum?: string;
  storedSize: number;
  /** With `pages`: pages checked, and the blocks (within the file) still failing when read again. */
  pages?: { checked: number; bad: number[] };
}

function isMissing(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/** This worker's buffer for lz4 units, reused file after file: a fresh MiB costs about as much as compressing it. */
let scratch: Uint8Array | undefined;

/** A buffer with room for the unit of a `chunk`-byte piece (written out before the next piece is compressed). */
function unitBuffer(chunk: number): Uint8Array {
  if (!scratch || scratch.byteLength < chunk + 64 * 1024) scratch = new Uint8Array(chunk + 64 * 1024);
  return scratch;
}

/** This worker's read buffer, reused file after file (a fresh 4 MiB per file costs page faults on every copy). */
let reads: Buffer | undefined;

/** A buffer of `size` bytes to read a piece into (valid until the next file's copy). */
function readBuffer(size: number): Buffer {
  if (!reads || reads.length < size) reads = Buffer.allocUnsafeSlow(size);
  return reads.subarray(0, size);
}

/**
 * Runs in a worker thread: a plain-format backup copies whole files in parallel, and hashing
 * (SHA-256 at ~1.8 GB/s per core) and compression belong off the main thread so that
 * `thread_count` really means cores at work.
 */
async function copy(task: FileCopyTask): Promise<FileCopyResult> {
  const hash = task.hash ? createFileHash(task.hash) : undefined;
  let src: number | undefined;
  try {
    src = openSync(task.source, 'r');
  } catch (err) {
    if (!isMissing(err)) throw err; // dropped while we copied: WAL replay recreates what matters
  }
  const dst = openSync(task.target, 'wx', 0o600);
  const flushBehind = new FlushBehind(dst);
  // Files past a few MiB are written past the page cache (util/direct-writer.ts), the rest as before.
  const appender = new DirectAppender(dst, async (data, at) => {
    writeAllSync(dst, data, at);
    flushBehind.wrote(data.length);
  });
  let appended = false;
  const verifier = task.pages ? new PageVerifier(task.pages.firstBlock, task.pages.startLsn) : undefined;
  let bad: number[] = [];
  let stored = 0;
  try {
    const buf = readBuffer(Math.min(task.chunk, Math.max(task.size, 1)));
    let position = 0;
    let eof = src === undefined;
    while (position < task.size) {
      const want = Math.min(buf.length, task.size - position);
      let got = 0;
      while (!eof && got < want) {
        const n = readSync(src!, buf, got, want - got, position + got);
        if (n === 0) eof = true;
        got += n;
      }
      if (got < want) buf.fill(0, got, want);
      const piece = buf.subarray(0, want);
      hash?.update(piece);
      verifier?.update(piece);
      const out =
        task.method === 'none' ? piece : compressChunk(task.method, task.level, piece, unitBuffer(task.chunk));
      await appender.write(out);
      // Lets the flush's completion run (this loop is otherwise synchronous), so the next one can start.
      await new Promise(setImmediate);
      stored += out.length;
      position += want;
    }
    if (task.size === 0 && task.method !== 'none') {
      const empty = compressChunk(task.method, task.level, Buffer.alloc(0));
      await appender.write(empty);
      stored += empty.length;
    }
    await appender.finish();
    appended = true;
    // No final fsync here: the backup fsyncs every file at the end, many at a time (RepositoryStorage.syncPrefix, before the backup is published).
    if (verifier && src !== undefined) bad = rereadFailing(src, verifier);
  } finally {
    try {
      if (!appended) await appender.abort();
      await flushBehind.drain();
    } finally {
      closeSync(dst);
      if (src !== undefined) closeSync(src);
    }
  }
  return {
    ...(hash ? { checksum: hash.digest('hex') } : {}),
    storedSize: stored,
    ...(verifier ? { pages: { checked: verifier.checked, bad } } : {}),
  };
}

/**
 * Reads the pages that failed verification once more: a page read while PostgreSQL wrote it can
 * look torn, and read again is whole (its LSN then shows it changed since the backup started).
 * Returns the blocks that still fail; a page the file no longer has is not reported.
 */
function rereadFailing(fd: number, verifier: PageVerifier): number[] {
  const bad: number[] = [];
  const page = Buffer.alloc(PAGE_SIZE);
  for (const block of verifier.suspects) {
    let got = 0;
    for (;;) {
      const n = readSync(fd, page, got, PAGE_SIZE - got, block * PAGE_SIZE + got);
      got += n;
      if (n === 0 || got === PAGE_SIZE) break;
    }
    if (got === PAGE_SIZE && !verifier.recheck(block, page)) bad.push(block);
  }
  return bad;
}

parentPort!.on('message', async (task: FileCopyTask) => {
  try {
    parentPort!.postMessage({ ok: true, value: await copy(task) });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    parentPort!.postMessage({ ok: false, error: e.code === 'ENOSPC' ? 'ENOSPC: no space left on device' : e.message });
  }
});
