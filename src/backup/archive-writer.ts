// Archive writer: the interface, settings and shared helpers of the writers that store a backup's files.

import type { DataHost, HostEntry, HostFile } from '../hosts/data-host.js';
import type { CompressionMethod } from '../storage/compression.js';
import type { FileCopyResult, FileCopyTask } from '../storage/file-copy-worker.js';
import type { ChecksumAlgorithm } from '../catalog/backup-info.js';
import { createChecksum, type ManifestArtifact, type ManifestFileEntry } from '../catalog/manifest.js';
import { phaseTimes } from '../util/phase-times.js';
import type { PageChecker, PageCheckTarget } from './page-check.js';
import type { HashThread } from './hash-thread.js';

/** Compresses one unit; identity for `none`. Provided by the engine (a worker pool or inline). */
export type UnitCompressor = (unit: Buffer) => Promise<Buffer>;

/** Receives every completed manifest entry, in archive order. */
export type EntrySink = (entry: ManifestFileEntry) => Promise<void>;

/**
 * Uncompressed bytes per compression unit of a tar archive (plain backups use 4 times as much): large
 * enough to compress well, small enough to bound memory.
 */
export const UNIT_SIZE = 1024 * 1024;

/**
 * Buffers of the compressor reused for later units (present when units are compressed in the worker pool): fresh
 * memory costs about as much as compressing it with lz4.
 */
export interface UnitBuffers {
  /** A buffer of exactly `unitSize` bytes for a unit's input, owning its whole ArrayBuffer (transferable). */
  unitBuffer?: () => Buffer;
  /**
   * Takes back a stored unit that `compress` returned, once it is written and nothing refers to it any more (a
   * storage writer keeps no reference to what it was given once write() resolved).
   */
  recycle?: (stored: Buffer) => void;
}

/** Settings shared by the archive writers of one backup. */
export interface ArchiveWriterSettings extends UnitBuffers {
  compression: CompressionMethod;
  /** Compression level (gzip/zstd); the method's default when absent. */
  level?: number;
  checksum: ChecksumAlgorithm;
  compress: UnitCompressor;
  /** How many units may be compressing at once (bounds memory: each is at most unitSize). */
  maxInFlight: number;
  /** Uncompressed bytes per unit. */
  unitSize: number;
  /**
   * Copies a whole file of this host into the repository in a worker thread (plain format):
   * returns its checksum and stored size. Absent: files stream through the main thread.
   */
  copyLocalFile?: (task: FileCopyTask) => Promise<FileCopyResult>;
  /** Computes the file checksums beside the main thread (absent: on the main thread, or `checksum` is NONE). */
  hashThread?: HashThread;
}

/**
 * What {@link readPieces} feeds every byte to: a hash here, or the hash thread (which returns a promise only when
 * it must wait for room).
 */
interface ByteSink {
  update(data: Uint8Array): unknown;
}

/**
 * Feeds `data` to `hash`, its time counted under `checksum` (hashing here, or the copy to the hash thread) and
 * any wait for the hash thread under `checksum wait`. Synchronous when nothing waits: no async step per piece
 * just to time it.
 */
function feedHash(hash: ByteSink, data: Uint8Array): Promise<unknown> | undefined {
  const result = phaseTimes.sync('checksum', () => hash.update(data));
  return result instanceof Promise ? phaseTimes.wait('checksum wait', result) : undefined;
}

/**
 * Reads a file's `size` bytes in pieces, hashing as it goes, with the next read already under way
 * while a piece is processed; pads with zeros if the file shrank.
 */
export async function readPieces(
  file: HostFile | undefined,
  size: number,
  pieceSize: (remaining: number) => number,
  hash: ByteSink | undefined,
  onPiece: (piece: Buffer) => Promise<void>,
  alloc: (size: number) => Buffer = Buffer.allocUnsafe,
): Promise<void> {
  let eof = file === undefined;
  const readOne = async (position: number, want: number): Promise<Buffer> => {
    const buf = alloc(want);
    let got = 0;
    while (!eof && got < want) {
      const n = await file!.read(buf, got, want - got, position + got);
      if (n === 0) eof = true;
      got += n;
    }
    // A relation truncated under us (VACUUM) reads short; the tar header already promised `size`
    // bytes, and WAL replay from the backup start restores the real content, as with pg_basebackup.
    if (got < want) buf.fill(0, got);
    return buf;
  };
  let position = 0;
  let want = Math.min(size, pieceSize(size));
  let pending = size > 0 ? readOne(0, want) : undefined;
  while (pending) {
    const buf = await phaseTimes.wait('read wait', pending);
    position += want;
    pending = undefined;
    if (position < size) {
      want = Math.min(size - position, pieceSize(size - position));
      pending = readOne(position, want);
      pending.catch(() => undefined); // handled when awaited; never an unhandled rejection meanwhile
    }
    if (hash) {
      const waiting = feedHash(hash, buf);
      if (waiting) await waiting;
    }
    await onPiece(buf);
  }
}

/**
 * Bytes given whole up to this size are hashed on the calling thread, not in the hash thread: SHA-256 of 64 KiB
 * takes ~40 µs here, about what the four messages of a hand-over cost (update, hashed, digest and its answer,
 * each waking a thread); most files of a cluster are this small.
 */
const HASH_HERE_MAX = 64 * 1024;

/**
 * Reads an entry's `size` bytes of content into `onPiece`: bytes given whole are passed on as they
 * are, a file is read from its host in pieces of `pieceSize` bytes (see {@link readPieces}). Every
 * byte is hashed with `checksum` (in `hashThread` when given) and, for a relation file, its pages verified; the
 * pages that failed are read again and reported before this returns. Returns the content's checksum (hex, or
 * undefined when none is kept), which may still be computing in the hash thread: await it before the manifest
 * entry is written.
 */
export async function readEntryContent(
  size: number,
  content: EntryContent | undefined,
  checksum: ChecksumAlgorithm,
  pieceSize: (remaining: number) => number,
  onPiece: (piece: Buffer) => Promise<void>,
  hashThread?: HashThread,
  alloc?: (size: number) => Buffer,
): Promise<{ checksum: Promise<string | undefined> }> {
  // Small bytes given whole are hashed here: their hash costs less than the messages that hand them over.
  const small = content !== undefined && 'data' in content && content.data.length <= HASH_HERE_MAX;
  const offloaded = hashThread && checksum !== 'NONE' && !small ? hashThread.open() : undefined;
  const local = offloaded ? undefined : createChecksum(checksum);
  const hash: ByteSink | undefined = offloaded ?? local;
  const pages = content?.pages;
  const verifier = pages?.checker.verifier(pages.target);
  if (content && 'data' in content) {
    if (hash) {
      const waiting = feedHash(hash, content.data);
      if (waiting) await waiting;
    }
    if (verifier) phaseTimes.sync('page verify', () => verifier.update(content.data));
    await onPiece(content.data);
  } else {
    const file = content ? await content.host.open(content.path) : undefined;
    try {
      await readPieces(
        file,
        size,
        pieceSize,
        hash,
        async (piece) => {
          if (verifier) phaseTimes.sync('page verify', () => verifier.update(piece));
          await onPiece(piece);
        },
        alloc,
      );
    } finally {
      await file?.close();
    }
  }
  if (pages && verifier) await pages.checker.settle(pages.target, verifier, pages.host, pages.path);
  const digest = offloaded ? offloaded.digest() : Promise.resolve(local?.digest('hex'));
  digest.catch(() => undefined); // awaited by the writer later; never an unhandled rejection meanwhile
  return { checksum: digest };
}

/** Allocates read buffers, a reused unit buffer for a whole unit when the settings have them. */
export function pieceAllocator(settings: ArchiveWriterSettings): ((size: number) => Buffer) | undefined {
  const { unitBuffer, unitSize } = settings;
  if (!unitBuffer) return undefined;
  return (size) => (size === unitSize ? unitBuffer() : Buffer.allocUnsafe(size));
}

/** Manifest entry for a host entry (without checksum or offsets). */
export function manifestEntryFor(entry: HostEntry, archive: string): ManifestFileEntry {
  return {
    path: entry.path,
    archive,
    type: entry.type,
    size: entry.type === 'file' ? entry.size : 0,
    mode: entry.mode,
    mtime: Math.floor(entry.mtimeMs / 1000),
    ...(entry.linkTarget !== undefined ? { linkTarget: entry.linkTarget } : {}),
  };
}

/**
 * Pages of an entry's content to verify against their data checksums (a relation file, when the
 * cluster has them): the writer feeds every byte it reads to a verifier, then has the failing pages
 * read again from `host`/`path` and reported.
 */
export interface EntryPageCheck {
  checker: PageChecker;
  target: PageCheckTarget;
  host: DataHost;
  path: string;
}

/**
 * Source of an entry's content: a file on a host, or bytes already read or made (small files read
 * ahead, backup_label, tablespace_map); `pages` when its pages are to be verified.
 */
export type EntryContent = ({ host: DataHost; path: string } | { data: Buffer }) & { pages?: EntryPageCheck };

/** Writes entries of one archive (`base` or a tablespace) into the backup. */
export interface ArchiveWriter {
  add(entry: HostEntry, content?: EntryContent): Promise<void>;
  /** Completes the archive; returns its stored artifact (tar) or undefined (plain). */
  finish(): Promise<{ artifact?: ManifestArtifact; storedBytes: number; dataBytes: number }>;
  /** Releases resources after a failure. */
  abort(): Promise<void>;
}
