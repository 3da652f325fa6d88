// WAL archive compression: MANAGE's gzip of complete archived segments old enough to be finished.

import { PosixStorage } from '../storage/posix/posix-storage.js';
import { createReadStream, createWriteStream } from 'node:fs';
import { open, rename, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { crashPoint } from '../util/crash-point.js';
import { fsyncDir, tempSibling } from '../util/fs-atomic.js';
import { parseArchiveFileName } from '../wal/segment-name.js';
import { archiveNames } from '../catalog/catalog.js';
import { GZIP_SUFFIX } from '../catalog/layout.js';

/**
 * Archived segments younger than this are left for the next MANAGE: an archive_command such as
 * `cp` (BART's default is scp) writes the segment under its final name, so a very recent file may
 * still be growing.
 */
export const MIN_AGE_MS = 10_000;

/** Segments MANAGE would gzip, or did. */
export interface CompressionResult {
  files: string[];
  bytesBefore: number;
  bytesAfter: number;
}

/**
 * The archived WAL segments that `wal_compression = enabled` compresses: complete segments only
 * (never `.partial`, `.history`, `.backup` or MBM files, which stay plain), older than
 * {@link MIN_AGE_MS}. A segment that already has a `.gz` twin (a compression interrupted between
 * rename and unlink) is compressed again, which is harmless and finishes the job.
 */
export async function segmentsToCompress(archivePath: string, nowMs = Date.now()): Promise<string[]> {
  const out: string[] = [];
  for (const name of await archiveNames(new PosixStorage(archivePath))) {
    // POSIX shim: migrate
    if (parseArchiveFileName(name)?.kind !== 'segment') continue;
    try {
      const st = await stat(join(archivePath, name));
      if (st.isFile() && nowMs - st.mtimeMs >= MIN_AGE_MS) out.push(name);
    } catch {
      /* removed meanwhile (another MANAGE finished it, or DELETE) */
    }
  }
  return out.sort();
}

/**
 * Gzips one archived segment atomically: the `.gz` is written to a temp file, fsynced and renamed
 * into place (directory fsynced) before the plain segment is unlinked, so at every instant at least
 * one complete copy exists; readers (ARCHIVE-GET, RESTORE, BACKUP, the scanner) take either.
 * Streams, so memory stays flat whatever the segment size. Returns the compressed size.
 * Test hook: crash point `compress:renamed` (between rename and unlink).
 */
export async function compressSegment(archivePath: string, name: string): Promise<number> {
  const source = join(archivePath, name);
  const target = source + GZIP_SUFFIX;
  const tmp = tempSibling(target);
  const handle = await open(tmp, 'wx', 0o600);
  try {
    await pipeline(
      createReadStream(source),
      createGzip({ level: 6 }),
      createWriteStream('', { fd: handle.fd, autoClose: false }),
    );
    await handle.sync();
  } catch (err) {
    await handle.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  const size = (await handle.stat()).size;
  await handle.close();
  await rename(tmp, target);
  await fsyncDir(archivePath);
  crashPoint('compress:renamed');
  await unlink(source);
  return size;
}

/** Compresses every segment {@link segmentsToCompress} picks (or only lists them with dryRun). */
export async function compressArchive(archivePath: string, dryRun: boolean): Promise<CompressionResult> {
  const files = await segmentsToCompress(archivePath);
  const result: CompressionResult = { files: [], bytesBefore: 0, bytesAfter: 0 };
  for (const name of files) {
    let before: number;
    try {
      before = (await stat(join(archivePath, name))).size;
    } catch {
      continue;
    }
    if (dryRun) {
      result.files.push(name);
      result.bytesBefore += before;
      continue;
    }
    const after = await compressSegment(archivePath, name);
    result.files.push(name);
    result.bytesBefore += before;
    result.bytesAfter += after;
  }
  if (!dryRun && result.files.length > 0) await fsyncDir(archivePath);
  return result;
}
