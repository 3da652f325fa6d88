// WAL archive: storing and fetching archived WAL files through the repository storage, atomically, idempotently, gzip-aware.

import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { PosixStorage } from '../storage/posix/posix-storage.js';
import {
  StorageError,
  StorageExistsError,
  StorageNotFoundError,
  joinKey,
  type RepositoryStorage,
  type StorageWriter,
} from '../storage/storage.js';
import { BartError, errorMessage } from '../util/errors.js';
import { crashPoint } from '../util/crash-point.js';
import { log } from '../util/log.js';
import { fsyncDir, tempSibling } from '../util/fs-atomic.js';
import { parseArchiveFileName, type ArchiveFileName } from '../wal/segment-name.js';
import { isValidWalSegmentSize, MAX_WAL_SEGMENT_SIZE } from '../postgres/constants.js';
import { findArchived } from '../catalog/catalog.js';
import { GZIP_SUFFIX } from '../catalog/layout.js';
import { createGunzipStream } from '../util/gunzip.js';
import { writeAll } from '../util/write-all.js';
import { readInOneBuffer } from '../util/read-in-one-buffer.js';

/** Outcome of storing one file in the archive. */
export type PushOutcome = 'archived' | 'already-archived';

/** Outcome of fetching one file from the archive. */
export type GetOutcome = 'restored' | 'restored-from-gz' | 'missing';

/**
 * A WAL archive: its storage (openWalArchive), or, for callers not migrated yet, a POSIX
 * archive_path (taken as a {@link PosixStorage} rooted there).
 */
export type WalArchive = RepositoryStorage | string;

/** The storage of a {@link WalArchive}. */
export function walArchiveStorage(archive: WalArchive): RepositoryStorage {
  return typeof archive === 'string' ? new PosixStorage(archive) : archive;
}

/**
 * Largest `.history` or `.backup` file taken from stdin: both are a few lines (a history file
 * gains one line per promotion), so anything near this size is not what PostgreSQL archives.
 */
const MAX_SMALL_ARCHIVE_FILE = 16 * 1024 * 1024;
/** Offset and size of xlp_seg_size in a WAL segment's long page header. */
const XLP_SEG_SIZE_OFFSET = 32;
const LONG_HEADER_BYTES = XLP_SEG_SIZE_OFFSET + 4;

/**
 * Checks that `name` is something PostgreSQL archives (segment, .partial, .history, .backup) and
 * returns it parsed; anything else is a BartError, so a typo never lands in (or reads from) the archive.
 */
export function requireArchiveFileName(name: string, what: string): ArchiveFileName {
  const parsed = parseArchiveFileName(name);
  if (!parsed) {
    throw new BartError(
      `${what} "${name}" is not a WAL archive file name: expected a WAL segment (24 hex digits, e.g. 000000010000000000000003), ` +
        'a .partial segment, a timeline history file (00000002.history) or a backup history file (...00000003.00000028.backup)',
    );
  }
  return parsed;
}

/** Opens an archived object for reading, decompressing `.gz` on the fly. */
export async function openArchived(storage: RepositoryStorage, key: string): Promise<Readable> {
  const raw = await storage.read(key);
  if (!key.endsWith(GZIP_SUFFIX)) return raw;
  const gunzip = createGunzipStream();
  raw.on('error', (err) => gunzip.destroy(err));
  gunzip.on('close', () => raw.destroy());
  return raw.pipe(gunzip);
}

/**
 * Reads two streams in step and says whether their bytes are identical, holding at most one chunk
 * of each in memory (WAL segments are 16 MB and more).
 */
export async function sameContent(a: Readable, b: Readable): Promise<boolean> {
  const ia = a[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  const ib = b[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  let bufA: Buffer = Buffer.alloc(0);
  let bufB: Buffer = Buffer.alloc(0);
  let doneA = false;
  let doneB = false;
  try {
    for (;;) {
      if (bufA.length === 0 && !doneA) {
        const r = await ia.next();
        if (r.done) doneA = true;
        else bufA = r.value;
      }
      if (bufB.length === 0 && !doneB) {
        const r = await ib.next();
        if (r.done) doneB = true;
        else bufB = r.value;
      }
      if (bufA.length === 0 && bufB.length === 0) {
        if (doneA && doneB) return true;
        continue;
      }
      if (bufA.length === 0 || bufB.length === 0) return false;
      const n = Math.min(bufA.length, bufB.length);
      if (!bufA.subarray(0, n).equals(bufB.subarray(0, n))) return false;
      bufA = bufA.subarray(n);
      bufB = bufB.subarray(n);
    }
  } finally {
    a.destroy();
    b.destroy();
  }
}

/** SHA-256 of a stream's bytes (streamed: constant memory). */
async function digestOf(stream: Readable): Promise<string> {
  const hash = createHash('sha256');
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) hash.update(chunk);
  } finally {
    stream.destroy();
  }
  return hash.digest('hex');
}

/** fsyncs an existing file (read-only is enough: fsync flushes the file, not the descriptor). */
async function fsyncFile(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Where an archived file's bytes come from: a local file (%p), which can be read twice, or stdin
 * (a segment streamed over ssh from a remote database host), which can be read once.
 */
interface PushSource {
  /** For messages: the path, or `stdin (<name>)`. */
  label: string;
  /** The bytes. */
  open(): Readable;
  /**
   * The bytes for storing them, when the source can hand them out in one reused buffer: each chunk is valid until
   * the next one is asked for (the storage writers keep no reference once a write resolves). Without it,
   * {@link open} is used.
   */
  chunks?(): AsyncIterable<Buffer>;
  /** Can {@link open} be called again (to compare against an archived copy)? */
  rereadable: boolean;
  /** Checks the byte count (and the first bytes) once all was read; a problem or undefined. */
  check(count: number, head: Buffer): string | undefined;
}

/** Options of {@link pushWalFile} and {@link pushWalStream}. */
export interface PushOptions {
  /**
   * A local file that receives a copy of the bytes stored (written while they are stored, then
   * renamed into place): ARCHIVE-PUSH maps a segment it just stored into an MBM from there
   * (archive/push-mbm.ts), so that an object store is not read back. Not written for a file
   * that was archived already.
   */
  copyTo?: string;
}

/**
 * Stores the WAL file at `sourcePath` in the archive under its own base name: written through
 * the storage with create-if-absent (POSIX: temp file, fsync, link(2), directory fsync; S3:
 * `If-None-Match: *`), so an existing file is never replaced. The same content again is a success;
 * different content under an existing name is an error and leaves the archived file untouched.
 */
export async function pushWalFile(
  archive: WalArchive,
  sourcePath: string,
  options: PushOptions = {},
): Promise<PushOutcome> {
  const storage = walArchiveStorage(archive);
  const name = basename(sourcePath);
  const parsed = requireArchiveFileName(name, 'file');
  let size: number;
  try {
    const st = await stat(sourcePath);
    if (!st.isFile()) throw new BartError(`"${sourcePath}" is not a regular file`);
    size = st.size;
  } catch (err) {
    if (err instanceof BartError) throw err;
    throw new BartError(`cannot read WAL file "${sourcePath}": ${errorMessage(err)}`);
  }
  // PostgreSQL always hands over whole segments (.partial ones are padded too): anything else is a wrong file.
  if ((parsed.kind === 'segment' || parsed.kind === 'partial') && !isValidWalSegmentSize(size)) {
    throw new BartError(
      `"${sourcePath}" is ${size} bytes, not a complete WAL segment (a power of two from 1 MB to 1 GB); refusing to archive it`,
    );
  }
  const source: PushSource = {
    label: sourcePath,
    open: () => createReadStream(sourcePath, { highWaterMark: 1024 * 1024 }),
    chunks: () => readInOneBuffer(sourcePath),
    rereadable: true,
    check: (count) =>
      count === size
        ? undefined
        : `"${sourcePath}" changed while it was being archived (${size} bytes expected, ${count} read)`,
  };
  return storeArchiveFile(storage, name, source, size, options);
}

/**
 * Stores WAL file `name` read from `input` (ARCHIVE-PUSH --stdin: a remote database host streams
 * the segment over ssh). The name is checked strictly; the bytes are counted, and a segment must
 * be exactly as long as the segment size its own first page header announces: a connection cut
 * half way is refused, never stored. Same idempotence and refusals as {@link pushWalFile}.
 */
export async function pushWalStream(
  archive: WalArchive,
  name: string,
  input: Readable,
  options: PushOptions = {},
): Promise<PushOutcome> {
  const storage = walArchiveStorage(archive);
  // A base name only: no directory part can ever reach the storage key.
  const parsed = requireArchiveFileName(name, 'WAL file name');
  const label = `"${name}" (from stdin)`;
  const isSegment = parsed.kind === 'segment' || parsed.kind === 'partial';
  const max = isSegment ? MAX_WAL_SEGMENT_SIZE : MAX_SMALL_ARCHIVE_FILE;
  let consumed = false;
  const source: PushSource = {
    label,
    open: () => {
      if (consumed) throw new Error(`${label} was read already`);
      consumed = true;
      return limitStream(input, max, label);
    },
    rereadable: false,
    check: (count, head) => {
      if (!isSegment) return count === 0 ? `${label} is empty; refusing to archive it` : undefined;
      const announced = head.length >= LONG_HEADER_BYTES ? head.readUInt32LE(XLP_SEG_SIZE_OFFSET) : 0;
      if (!isValidWalSegmentSize(announced))
        return `${label} does not start with a WAL long page header (${count} bytes read); refusing to archive it`;
      if (count !== announced)
        return `${label} is ${count} bytes, not the complete WAL segment of ${announced} bytes its header announces (cut off in transfer?); refusing to archive it`;
      return undefined;
    },
  };
  return storeArchiveFile(storage, name, source, undefined, options);
}

/** Passes a stream through, failing it once more than `max` bytes went by (a hostile or wrong input cannot fill the memory of a buffering store). */
async function* limitBytes(input: Readable, max: number, label: string): AsyncGenerator<Buffer> {
  let n = 0;
  for await (const chunk of input as AsyncIterable<Buffer>) {
    n += chunk.length;
    if (n > max) throw new BartError(`${label} is larger than ${max} bytes; refusing to archive it`);
    yield chunk;
  }
}

function limitStream(input: Readable, max: number, label: string): Readable {
  // Readable.from keeps backpressure: the generator pulls only when the consumer reads.
  return Readable.from(limitBytes(input, max, label), { objectMode: false });
}

/** The common part of the two pushes: compare with an archived copy, or store create-if-absent. */
async function storeArchiveFile(
  storage: RepositoryStorage,
  name: string,
  source: PushSource,
  sizeHint: number | undefined,
  options: PushOptions,
): Promise<PushOutcome> {
  const where = storage.location;
  if (storage.localPath('') !== undefined) {
    // POSIX: INIT creates the archive directory; a missing one means the server was never set up
    // (an ARCHIVE-PUSH creating it would hide that).
    const dir = storage.localPath('')!;
    try {
      const st = await stat(dir);
      if (!st.isDirectory()) throw new BartError(`archive path "${dir}" is not a directory`);
    } catch (err) {
      if (err instanceof BartError) throw err;
      throw new BartError(`archive path "${dir}" is not usable (${errorMessage(err)}); run "bart INIT" to create it`);
    }
  }
  let existingKey: string | undefined;
  try {
    existingKey = await findArchived(storage, name);
  } catch (err) {
    throw new BartError(`cannot archive ${source.label} into "${where}": ${errorMessage(err)}`);
  }
  if (existingKey !== undefined) return compareWithArchived(storage, existingKey, source, undefined);

  let writer: StorageWriter | undefined;
  let copy: { path: string; tmp: string; handle: FileHandle | undefined } | undefined;
  // The digest serves only a push that finds the name taken at the end (a race): a source read again compares
  // byte by byte then, so only one that cannot be read again is hashed as it goes (SHA-256: ~12 ms a segment).
  const hash = source.rereadable ? undefined : createHash('sha256');
  try {
    writer = await storage.create(name, { ifAbsent: true, ...(sizeHint !== undefined ? { sizeHint } : {}) });
    if (options.copyTo !== undefined) {
      const tmp = tempSibling(options.copyTo);
      try {
        copy = { path: options.copyTo, tmp, handle: await open(tmp, 'wx', 0o600) };
      } catch (err) {
        log.warning(`cannot keep a local copy of ${name} in "${options.copyTo}" for its MBM: ${errorMessage(err)}`);
      }
    }
    let count = 0;
    const headParts: Buffer[] = [];
    let headBytes = 0;
    let input: AsyncIterable<Buffer>;
    try {
      input = source.chunks?.() ?? (source.open() as AsyncIterable<Buffer>);
    } catch (err) {
      throw new BartError(`cannot read WAL file ${source.label}: ${errorMessage(err)}`);
    }
    try {
      for await (const chunk of input) {
        count += chunk.length;
        if (headBytes < LONG_HEADER_BYTES) {
          // A copy: the chunk's buffer may be reused for the next one.
          headParts.push(Buffer.from(chunk.subarray(0, LONG_HEADER_BYTES - headBytes)));
          headBytes += Math.min(chunk.length, LONG_HEADER_BYTES - headBytes);
        }
        hash?.update(chunk);
        await writer.write(chunk);
        if (copy?.handle) {
          try {
            await writeAll(copy.handle, chunk);
          } catch (err) {
            // Only a cache for the MBM: archiving goes on without it (bart-scanner fills the gap).
            log.warning(`cannot keep a local copy of ${name} in "${copy.path}" for its MBM: ${errorMessage(err)}`);
            await copy.handle.close().catch(() => undefined);
            await unlink(copy.tmp).catch(() => undefined);
            copy = undefined;
          }
        }
      }
    } catch (err) {
      if (err instanceof BartError || err instanceof StorageError) throw err;
      throw new BartError(`cannot read WAL file ${source.label}: ${errorMessage(err)}`);
    }
    const problem = source.check(count, Buffer.concat(headParts));
    if (problem !== undefined) throw new BartError(problem);
    crashPoint('push:copied');
    try {
      await writer.finish();
      writer = undefined;
    } catch (err) {
      if (!(err instanceof StorageExistsError)) throw err;
      writer = undefined;
      // Another ARCHIVE-PUSH stored the same name while we copied: judge by content, as above.
      const key = (await findArchived(storage, name)) ?? name;
      return await compareWithArchived(storage, key, source, hash?.digest('hex'));
    }
    crashPoint('push:linked');
    if (copy?.handle) {
      // Only a cache for the MBM (the archive has the segment): no fsync, and no failure.
      const done = copy;
      copy = undefined;
      try {
        await done.handle!.close();
        await rename(done.tmp, done.path);
      } catch (err) {
        log.warning(`cannot keep a local copy of ${name} in "${done.path}" for its MBM: ${errorMessage(err)}`);
        await unlink(done.tmp).catch(() => undefined);
      }
    }
    return 'archived';
  } catch (err) {
    await writer?.abort();
    if (err instanceof BartError) throw err;
    throw new BartError(`cannot archive ${source.label} into "${where}": ${errorMessage(err)}`);
  } finally {
    if (copy) {
      await copy.handle?.close().catch(() => undefined);
      await unlink(copy.tmp).catch(() => undefined);
    }
  }
}

/**
 * The verdict when the archive already holds the name (as `key`, maybe its `.gz`): identical
 * content is a success, made durable first on POSIX (PostgreSQL recycles the segment once told it
 * is archived, and the copy found may be another push's that has not fsynced the directory yet,
 * or one written by scp that was never fsynced; a completed S3 upload is durable). `digest` is the
 * source's SHA-256 when its bytes were read already (a stream that cannot be read again).
 */
async function compareWithArchived(
  storage: RepositoryStorage,
  key: string,
  source: PushSource,
  digest: string | undefined,
): Promise<PushOutcome> {
  const archived = joinKey(storage.location, key);
  let same: boolean;
  try {
    if (digest === undefined && source.rereadable) {
      same = await sameContent(source.open(), await openArchived(storage, key));
    } else {
      const ours = digest ?? (await digestOf(source.open()));
      same = ours === (await digestOf(await openArchived(storage, key)));
    }
  } catch (err) {
    if (err instanceof BartError) throw err;
    throw new BartError(`cannot compare ${source.label} with the archived "${archived}": ${errorMessage(err)}`);
  }
  if (same) {
    const path = storage.localPath(key);
    if (path !== undefined) {
      try {
        await fsyncFile(path);
        await fsyncDir(dirname(path));
      } catch (err) {
        throw new BartError(`cannot make the archived "${archived}" durable: ${errorMessage(err)}`);
      }
    }
    return 'already-archived';
  }
  throw new BartError(
    `"${archived}" already exists in the archive with different content than ${source.label}; the archived file was kept. ` +
      'Two servers may be archiving into the same archive_path, or the server was re-created: check archive_path/archive_command',
  );
}

/** Copies a stream into a new local file (mode 0600) and fsyncs it; returns the bytes written. */
async function writeSynced(source: Readable, target: string): Promise<number> {
  const handle = await open(target, 'wx', 0o600);
  try {
    for await (const chunk of source) await writeAll(handle, chunk as Buffer);
    await handle.sync();
    return (await handle.stat()).size;
  } finally {
    await handle.close();
  }
}

/** The destination of {@link getWalFile} that means standard output. */
export const STDOUT_DESTINATION = '-';

/**
 * Copies `name` from the archive to `destination` (decompressing a `.gz` copy transparently)
 * through a temp file next to the destination, fsync and rename, so recovery never reads a
 * half-written file. Destination `-` is standard output (for a restore_command over ssh).
 */
export async function getWalFile(archive: WalArchive, name: string, destination: string): Promise<GetOutcome> {
  const storage = walArchiveStorage(archive);
  requireArchiveFileName(name, 'WAL file name');
  let key: string | undefined;
  try {
    key = await findArchived(storage, name);
  } catch (err) {
    throw new BartError(`cannot look for "${name}" in the archive "${storage.location}": ${errorMessage(err)}`);
  }
  if (key === undefined) return 'missing';
  if (destination === STDOUT_DESTINATION) {
    // Streamed to a restore_command on another host (over ssh), which keeps it only when we exit 0.
    try {
      await pipeline(await openArchived(storage, key), process.stdout);
    } catch (err) {
      throw new BartError(`cannot send "${joinKey(storage.location, key)}" to stdout: ${errorMessage(err)}`);
    }
    return key.endsWith(GZIP_SUFFIX) ? 'restored-from-gz' : 'restored';
  }
  const target = resolve(destination);
  const tmp = tempSibling(target);
  try {
    try {
      await writeSynced(await openArchived(storage, key), tmp);
    } catch (err) {
      // MANAGE (wal_compression) may remove the plain segment right after we found it; its .gz is
      // complete by then. Failing here would make recovery believe the archive ends at this segment.
      if (
        !(err instanceof StorageNotFoundError) ||
        key.endsWith(GZIP_SUFFIX) ||
        (await storage.stat(key + GZIP_SUFFIX)) === undefined
      )
        throw err;
      await unlink(tmp).catch(() => undefined);
      key += GZIP_SUFFIX;
      await writeSynced(await openArchived(storage, key), tmp);
    }
    await rename(tmp, target);
    await fsyncDir(dirname(target));
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw new BartError(`cannot restore "${joinKey(storage.location, key)}" to "${destination}": ${errorMessage(err)}`);
  }
  return key.endsWith(GZIP_SUFFIX) ? 'restored-from-gz' : 'restored';
}

/** Counts archived WAL segments (plain or `.gz`); .partial, .history, .backup and MBM files do not count. */
export async function countArchivedSegments(archive: WalArchive): Promise<number> {
  const storage = walArchiveStorage(archive);
  let count = 0;
  try {
    for await (const page of storage.list('', { shallow: true })) {
      for (const o of page.objects) {
        const bare = o.key.endsWith(GZIP_SUFFIX) ? o.key.slice(0, -GZIP_SUFFIX.length) : o.key;
        if (parseArchiveFileName(bare)?.kind === 'segment') count++;
      }
    }
  } catch (err) {
    throw new BartError(`cannot list archive "${storage.location}": ${errorMessage(err)}`);
  }
  return count;
}
