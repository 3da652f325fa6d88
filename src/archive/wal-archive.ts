// WAL archive: storing and fetching archived WAL files atomically, idempotently and gzip-aware.

import { PosixStorage } from '../storage/posix/posix-storage.js';
import { createReadStream, createWriteStream, type ReadStream } from 'node:fs';
import { link, open, readdir, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import type { Readable } from 'node:stream';
import { BartError, errorMessage, isErrnoError } from '../util/errors.js';
import { crashPoint } from '../util/crash-point.js';
import { fsyncDir, tempSibling } from '../util/fs-atomic.js';
import { pathExists } from '../util/path-exists.js';
import { parseArchiveFileName, type ArchiveFileName } from '../wal/segment-name.js';
import { isValidWalSegmentSize } from '../postgres/constants.js';
import { findArchived } from '../catalog/catalog.js';
import { GZIP_SUFFIX } from '../catalog/layout.js';

/** Outcome of storing one file in the archive. */
export type PushOutcome = 'archived' | 'already-archived';

/** Outcome of fetching one file from the archive. */
export type GetOutcome = 'restored' | 'restored-from-gz' | 'missing';

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

/** Opens an archived file for reading, decompressing `.gz` on the fly. */
function openArchived(path: string): Readable {
  const raw = createReadStream(path);
  if (!path.endsWith(GZIP_SUFFIX)) return raw;
  const gunzip = createGunzip();
  raw.on('error', (err) => gunzip.destroy(err));
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
    (a as ReadStream).destroy?.();
    (b as ReadStream).destroy?.();
  }
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

/** Copies a stream into a new file (mode 0600) and fsyncs it; returns the bytes written. */
async function writeSynced(source: Readable, target: string): Promise<number> {
  const handle = await open(target, 'wx', 0o600);
  try {
    const out = createWriteStream('', { fd: handle.fd, autoClose: false });
    await pipeline(source, out);
    await handle.sync();
    return (await handle.stat()).size;
  } finally {
    await handle.close();
  }
}

/**
 * Stores the WAL file at `sourcePath` in `archiveDir` under its own base name: copied to a temp file
 * in the archive directory, fsynced, hard-linked into place (which, unlike rename, never replaces a
 * file that appeared meanwhile), and the directory fsynced. The same content again is a success;
 * different content under an existing name is an error and leaves the archived file untouched.
 */
export async function pushWalFile(archiveDir: string, sourcePath: string): Promise<PushOutcome> {
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
  try {
    const st = await stat(archiveDir);
    if (!st.isDirectory()) throw new BartError(`archive path "${archiveDir}" is not a directory`);
  } catch (err) {
    if (err instanceof BartError) throw err;
    throw new BartError(
      `archive path "${archiveDir}" is not usable (${errorMessage(err)}); run "bart INIT" to create it`,
    );
  }

  const target = join(archiveDir, name);
  const existingKey = await findArchived(new PosixStorage(archiveDir), name); // POSIX shim: migrate
  if (existingKey) return compareWithArchived(sourcePath, join(archiveDir, existingKey), archiveDir);

  const tmp = tempSibling(target);
  try {
    const written = await writeSynced(createReadStream(sourcePath), tmp);
    if (written !== size)
      throw new BartError(
        `"${sourcePath}" changed while it was being archived (${size} bytes expected, ${written} read)`,
      );
    crashPoint('push:copied');
    try {
      await link(tmp, target);
    } catch (err) {
      if (!(isErrnoError(err) && err.code === 'EEXIST')) throw err;
      // Another ARCHIVE-PUSH stored the same name while we copied: our copy is not needed whatever the
      // verdict, so it goes first (parallel pushes of one segment used to leave theirs behind); then
      // judge by content, as above.
      await unlink(tmp);
      return await compareWithArchived(sourcePath, target, archiveDir);
    }
    crashPoint('push:linked');
    await unlink(tmp);
    await fsyncDir(archiveDir);
    return 'archived';
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    if (err instanceof BartError) throw err;
    throw new BartError(`cannot archive "${sourcePath}" into "${archiveDir}": ${errorMessage(err)}`);
  }
}

/**
 * The verdict when `archived` already holds the name: identical content is a success, made durable
 * first (PostgreSQL recycles the segment once told it is archived, and the copy found may be another
 * push's that has not fsynced the directory yet, or one written by scp that was never fsynced).
 */
async function compareWithArchived(sourcePath: string, archived: string, archiveDir: string): Promise<PushOutcome> {
  if (await sameContent(createReadStream(sourcePath), openArchived(archived))) {
    try {
      await fsyncFile(archived);
      await fsyncDir(archiveDir);
    } catch (err) {
      throw new BartError(`cannot make the archived "${archived}" durable: ${errorMessage(err)}`);
    }
    return 'already-archived';
  }
  throw new BartError(
    `"${archived}" already exists in the archive with different content than "${sourcePath}"; the archived file was kept. ` +
      'Two servers may be archiving into the same archive_path, or the server was re-created: check archive_path/archive_command',
  );
}

/**
 * Copies `name` from `archiveDir` to `destination` (decompressing a `.gz` copy transparently) through
 * a temp file next to the destination, fsync and rename, so recovery never reads a half-written file.
 */
export async function getWalFile(archiveDir: string, name: string, destination: string): Promise<GetOutcome> {
  requireArchiveFileName(name, 'WAL file name');
  const archivedKey = await findArchived(new PosixStorage(archiveDir), name); // POSIX shim: migrate
  if (!archivedKey) return 'missing';
  let archived = join(archiveDir, archivedKey);
  const target = resolve(destination);
  const tmp = tempSibling(target);
  try {
    try {
      await writeSynced(openArchived(archived), tmp);
    } catch (err) {
      // MANAGE (wal_compression) may unlink the plain segment right after we found it; its .gz is
      // complete by then. Failing here would make recovery believe the archive ends at this segment.
      if (!(
        isErrnoError(err) &&
        err.code === 'ENOENT' &&
        !archived.endsWith(GZIP_SUFFIX) &&
        (await pathExists(archived + GZIP_SUFFIX))
      ))
        throw err;
      await unlink(tmp).catch(() => undefined);
      archived += GZIP_SUFFIX;
      await writeSynced(openArchived(archived), tmp);
    }
    await rename(tmp, target);
    await fsyncDir(dirname(target));
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw new BartError(`cannot restore "${archived}" to "${destination}": ${errorMessage(err)}`);
  }
  return archived.endsWith(GZIP_SUFFIX) ? 'restored-from-gz' : 'restored';
}

/** Counts archived WAL segments (plain or `.gz`); .partial, .history, .backup and MBM files do not count. */
export async function countArchivedSegments(archiveDir: string): Promise<number> {
  let names: string[];
  try {
    names = await readdir(archiveDir);
  } catch (err) {
    if (isErrnoError(err) && (err.code === 'ENOENT' || err.code === 'ENOTDIR')) return 0;
    throw new BartError(`cannot list archive path "${archiveDir}": ${errorMessage(err)}`);
  }
  let count = 0;
  for (const n of names) {
    const bare = n.endsWith(GZIP_SUFFIX) ? n.slice(0, -GZIP_SUFFIX.length) : n;
    if (parseArchiveFileName(bare)?.kind === 'segment') count++;
  }
  return count;
}
