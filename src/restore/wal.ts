// Restore WAL: RESTORE -c, the archived WAL a restore can need selected, sized and copied from the WAL archive storage.

import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import type { Readable } from 'node:stream';
import type { RestoreTarget } from '../hosts/restore-target.js';
import { StorageNotFoundError, joinKey, type RepositoryStorage } from '../storage/storage.js';
import { BartError, errorMessage } from '../util/errors.js';
import { parseArchiveFileName, segmentNumberFromName } from '../wal/segment-name.js';
import type { BackupInfo } from '../catalog/backup-info.js';
import { GZIP_SUFFIX } from '../catalog/layout.js';
import { createGunzipStream } from '../util/gunzip.js';
import { forEachLimited } from '../util/for-each-limited.js';

/** An archived file RESTORE -c copies, with its stored size (compressed for `.gz`). */
export interface WalToCopy {
  name: string;
  storedBytes: number;
}

/** Most bytes a non-segment archived file (a history file) may take: it is read whole. */
const MAX_SMALL_FILE_BYTES = 16 * 1024 * 1024;

/**
 * The archived WAL a restore of `info` can need: every timeline history file, and the segments from
 * the backup's start segment on, on the backup's timeline and later ones (up to `maxTimeline` when
 * -t names one). Later timelines are included because recovery follows them ('latest' by default).
 * One listing of the archive gives names and sizes.
 */
export async function selectWalToCopy(
  archive: RepositoryStorage,
  info: BackupInfo,
  maxTimeline?: number,
): Promise<WalToCopy[]> {
  const stored: { name: string; size: number }[] = [];
  try {
    for await (const page of archive.list('', { shallow: true })) {
      for (const o of page.objects) stored.push({ name: o.key, size: o.size });
    }
  } catch (err) {
    throw new BartError(`cannot list the WAL archive "${archive.location}": ${errorMessage(err)}`);
  }
  stored.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const startSeg = segmentNumberFromName(info.startWalFile, info.walSegmentSize);
  const picked = new Map<string, WalToCopy>();
  for (const { name: storedName, size } of stored) {
    const name = storedName.endsWith(GZIP_SUFFIX) ? storedName.slice(0, -GZIP_SUFFIX.length) : storedName;
    const parsed = parseArchiveFileName(name);
    if (!parsed) continue;
    let wanted = false;
    if (parsed.kind === 'history') wanted = true;
    else if (parsed.kind === 'segment') {
      wanted =
        parsed.timeline >= info.timeline &&
        (maxTimeline === undefined || parsed.timeline <= maxTimeline) &&
        segmentNumberFromName(name, info.walSegmentSize) >= startSeg;
    }
    // The plain copy sorts first and is taken; its .gz twin (MANAGE compressing it) is the fallback.
    if (!wanted || picked.has(name)) continue;
    picked.set(name, { name, storedBytes: size });
  }
  return [...picked.values()];
}

/** Bytes the copied WAL takes once decompressed (segments are whole; a .gz one expands to a segment). */
export function walCopyBytes(files: WalToCopy[], segmentSize: number): number {
  return files.reduce(
    (sum, f) =>
      sum + (parseArchiveFileName(f.name)?.kind === 'segment' ? Math.max(segmentSize, f.storedBytes) : f.storedBytes),
    0,
  );
}

/** The archived copy of `name`: plain, else its `.gz` twin (MANAGE may compress it between listing and reading). */
async function openArchived(
  archive: RepositoryStorage,
  name: string,
): Promise<{ key: string; stream: Readable; size: number } | undefined> {
  for (const key of [name, name + GZIP_SUFFIX]) {
    const st = await archive.stat(key);
    if (st === undefined) continue;
    try {
      return { key, stream: await archive.read(key), size: st.size };
    } catch (err) {
      if (!(err instanceof StorageNotFoundError)) throw err;
    }
  }
  return undefined;
}

/** Writes one archived file into `destDir` on the target, decompressing a `.gz` copy; checks the size. */
async function copyOne(
  archive: RepositoryStorage,
  name: string,
  segmentSize: number,
  target: RestoreTarget,
  destDir: string,
): Promise<void> {
  const found = await openArchived(archive, name);
  if (!found)
    throw new BartError(`WAL file ${name} vanished from the archive "${archive.location}" while it was being copied`);
  const where = joinKey(archive.location, found.key);
  const gz = found.key.endsWith(GZIP_SUFFIX);
  const segment = parseArchiveFileName(name)?.kind === 'segment';
  let source: AsyncIterable<Buffer> | Iterable<Buffer>;
  let size: number;
  if (!gz) {
    source = found.stream;
    size = found.size;
  } else if (segment) {
    // A compressed segment expands to exactly one segment: streamed, never held whole.
    const gunzip = createGunzipStream();
    found.stream.on('error', (err) => gunzip.destroy(err));
    source = found.stream.pipe(gunzip);
    size = segmentSize;
  } else {
    found.stream.destroy();
    // A history file: small, read whole (capped) to learn its size.
    const raw = await archive.readAll(found.key, MAX_SMALL_FILE_BYTES);
    const data = gunzipSync(raw, { maxOutputLength: MAX_SMALL_FILE_BYTES });
    source = [data];
    size = data.length;
  }
  const w = await target.openWriter(join(destDir, name), 0o600, size);
  let sent = 0;
  try {
    for await (const chunk of source) {
      if (sent + chunk.length > size) throw new Error(`it holds more than the ${size} bytes expected`);
      sent += chunk.length;
      await w.write(chunk);
    }
    if (sent !== size) throw new Error(`it holds ${sent} bytes, ${size} expected`);
    await w.finish();
  } catch (err) {
    found.stream.destroy();
    await w.abort();
    throw new BartError(`cannot copy WAL file "${where}" into "${destDir}": ${errorMessage(err)}`);
  }
}

/**
 * Copies the selected WAL from the archive into `destDir` on the target (decompressing .gz),
 * `parallel` files at a time (one at a time over ssh, where files go out on one upload stream).
 */
export async function copyWal(
  archive: RepositoryStorage,
  files: WalToCopy[],
  segmentSize: number,
  target: RestoreTarget,
  destDir: string,
  parallel: number,
  signal?: AbortSignal,
): Promise<void> {
  await forEachLimited(files, target.spec.kind === 'ssh' ? 1 : Math.max(1, parallel), async (f) => {
    signal?.throwIfAborted();
    await copyOne(archive, f.name, segmentSize, target, destDir);
  });
}
