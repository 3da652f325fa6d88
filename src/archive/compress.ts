// WAL archive compression: MANAGE's gzip of complete archived segments old enough to be finished, through the storage.

import { createGzip } from 'node:zlib';
import { crashPoint } from '../util/crash-point.js';
import { BartError, errorMessage } from '../util/errors.js';
import { fsyncDir } from '../util/fs-atomic.js';
import { parseArchiveFileName } from '../wal/segment-name.js';
import { GZIP_SUFFIX } from '../catalog/layout.js';
import { joinKey, StorageNotFoundError, type RepositoryStorage, type StoredObject } from '../storage/storage.js';
import { walArchiveStorage, type WalArchive } from './wal-archive.js';

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

/** The segments to compress with their listed size and time (a listing has both: no stat per file on S3). */
async function candidates(storage: RepositoryStorage, nowMs: number): Promise<StoredObject[]> {
  const out: StoredObject[] = [];
  for await (const page of storage.list('', { shallow: true })) {
    for (const o of page.objects) {
      if (parseArchiveFileName(o.key)?.kind !== 'segment') continue;
      if (nowMs - o.modified.getTime() >= MIN_AGE_MS) out.push(o);
    }
  }
  return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

/**
 * The archived WAL segments that `wal_compression = enabled` compresses: complete segments only
 * (never `.partial`, `.history`, `.backup` or MBM files, which stay plain), older than
 * {@link MIN_AGE_MS}. A segment that already has a `.gz` twin (a compression interrupted between
 * writing the `.gz` and removing the plain one) is compressed again, which is harmless and
 * finishes the job.
 */
export async function segmentsToCompress(archive: WalArchive, nowMs = Date.now()): Promise<string[]> {
  return (await candidates(walArchiveStorage(archive), nowMs)).map((o) => o.key);
}

/**
 * Gzips one archived segment: the `.gz` is written through the storage (visible only once complete
 * and durable: POSIX temp file, fsync, rename, directory fsync; S3 a completed upload) before the
 * plain segment is removed, so at every instant at least one complete copy exists; readers
 * (ARCHIVE-GET, RESTORE, BACKUP, the scanner) take either. Streams, so memory stays flat whatever
 * the segment size. Returns the compressed size.
 * Test hook: crash point `compress:renamed` (between the `.gz` becoming visible and the removal).
 */
export async function compressSegment(archive: WalArchive, name: string): Promise<number> {
  const storage = walArchiveStorage(archive);
  const target = name + GZIP_SUFFIX;
  const writer = await storage.create(target);
  let size = 0;
  try {
    const gzip = createGzip({ level: 6 });
    const source = await storage.read(name);
    source.on('error', (err) => gzip.destroy(err));
    source.pipe(gzip);
    for await (const chunk of gzip as AsyncIterable<Buffer>) {
      size += chunk.length;
      await writer.write(chunk);
    }
    await writer.finish();
  } catch (err) {
    await writer.abort();
    throw err;
  }
  crashPoint('compress:renamed');
  await storage.remove(name);
  return size;
}

/** Compresses every segment {@link segmentsToCompress} picks (or only lists them with dryRun). */
export async function compressArchive(archive: WalArchive, dryRun: boolean): Promise<CompressionResult> {
  const storage = walArchiveStorage(archive);
  const result: CompressionResult = { files: [], bytesBefore: 0, bytesAfter: 0 };
  for (const o of await candidates(storage, Date.now())) {
    if (dryRun) {
      result.files.push(o.key);
      result.bytesBefore += o.size;
      continue;
    }
    let after: number;
    try {
      after = await compressSegment(storage, o.key);
    } catch (err) {
      // Removed meanwhile (another MANAGE finished it, or DELETE): nothing to do.
      if (err instanceof StorageNotFoundError) continue;
      throw new BartError(`cannot compress ${joinKey(storage.location, o.key)}: ${errorMessage(err)}`);
    }
    result.files.push(o.key);
    result.bytesBefore += o.size;
    result.bytesAfter += after;
  }
  // POSIX: the removals of the plain segments are durable too (S3 has nothing to flush).
  const dir = storage.localPath('');
  if (!dryRun && result.files.length > 0 && dir !== undefined) await fsyncDir(dir);
  return result;
}
