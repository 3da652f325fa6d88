// Concept: ARCHIVE-GET prefetch with archive_async on — the next segments fetched into a local spool while recovery replays, served only when verified.

import { spawn } from 'node:child_process';
import { copyFile, open, readdir, readFile, rename, stat, unlink } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { acquireLock, liveLockHolder, type CatalogLock } from '../catalog/lock.js';
import { findArchived } from '../catalog/catalog.js';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { isValidWalSegmentSize } from '../postgres/constants.js';
import { openWalArchive } from '../storage/open-repository.js';
import type { RepositoryStorage } from '../storage/storage.js';
import { bartScriptPath } from '../util/bart-binary.js';
import { errorMessage } from '../util/errors.js';
import { ensureDir, fsyncDir, tempSibling, writeFileAtomic } from '../util/fs-atomic.js';
import { log } from '../util/log.js';
import { parseArchiveFileName, segmentName, segmentNumberFromName, timelineFromName } from '../wal/segment-name.js';
import { spoolPaths } from './async-spool.js';
import { getWalFile, walArchiveStorage, type GetOutcome, type WalArchive } from './wal-archive.js';

/** Segments fetched ahead of the one recovery asks for, per worker. */
const AHEAD_PER_WORKER = 4;
const PREFETCH_LOCK = 'prefetch';
/** How long a prefetcher waits for recovery to take one of its segments before it exits. */
const IDLE_EXIT_MS = 20_000;
/** How often a prefetcher looks whether recovery took its segments or asked for another. */
const POLL_MS = 50;
/** The file in the prefetch directory naming the last segment ARCHIVE-GET fetched from the archive itself. */
const REQUESTED_FILE = 'requested';
/** Files of a prefetched segment: the data and its provenance. */
const PREFETCH_SUFFIXES = ['', '.meta'];
/** Offset of xlp_seg_size in a WAL segment's long page header. */
const XLP_SEG_SIZE_OFFSET = 32;

/** The prefetch directory of a server: `<spool>/get`. */
export function prefetchDir(config: BartConfig, server: ServerConfig): string {
  return join(spoolPaths(config, server).root, 'get');
}

/** What a prefetched file was fetched from: the archive object's key, size and time, as its `.meta` records them. */
interface Provenance {
  key: string;
  size: number;
  modified: number;
}

/**
 * Serves `name` from the prefetch directory into `destination` when it is there and still what the
 * archive holds: its `.meta` (written after the data was fsynced and renamed into place) must name
 * the archive object that exists now with the same size and time, and a segment must be complete
 * (its size a valid segment size that its first page header announces). Anything else is removed
 * and false returned: the caller fetches from the archive as without prefetch. The file is moved
 * (or copied, across file systems) to a temp name beside `destination`, fsynced and renamed.
 */
export async function servePrefetched(
  config: BartConfig,
  server: ServerConfig,
  archive: RepositoryStorage,
  name: string,
  destination: string,
): Promise<boolean> {
  const dir = prefetchDir(config, server);
  const data = join(dir, name);
  const meta = `${data}.meta`;
  let provenance: Provenance;
  try {
    provenance = JSON.parse(await readFile(meta, 'utf8')) as Provenance;
  } catch {
    return false;
  }
  const discard = async () => {
    for (const suffix of PREFETCH_SUFFIXES) await unlink(data + suffix).catch(() => undefined);
  };
  try {
    const now = await archive.stat(provenance.key);
    if (now === undefined || now.size !== provenance.size || now.modified.getTime() !== provenance.modified) {
      await discard();
      return false;
    }
    if (parseArchiveFileName(name)?.kind === 'segment' && !(await completeSegment(data))) {
      await discard();
      return false;
    }
    const target = resolve(destination);
    const tmp = tempSibling(target);
    try {
      await rename(data, tmp);
    } catch {
      await copyFile(data, tmp);
      await unlink(data).catch(() => undefined);
    }
    const handle = await open(tmp, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, target);
    await fsyncDir(dirname(target));
    await unlink(meta).catch(() => undefined);
    return true;
  } catch (err) {
    log.debug(`prefetched ${name} not served: ${errorMessage(err)}`);
    await discard();
    return false;
  }
}

/** A segment file whose size is a valid segment size announced by its own long page header. */
async function completeSegment(path: string): Promise<boolean> {
  const handle = await open(path, 'r');
  try {
    const size = (await handle.stat()).size;
    const head = Buffer.alloc(XLP_SEG_SIZE_OFFSET + 4);
    const { bytesRead } = await handle.read(head, 0, head.length, 0);
    return bytesRead === head.length && isValidWalSegmentSize(size) && head.readUInt32LE(XLP_SEG_SIZE_OFFSET) === size;
  } finally {
    await handle.close();
  }
}

/**
 * Whether prefetching pays for a segment ARCHIVE-GET just fetched: a plain segment in a local directory archive
 * costs one copy, which RESTORE's restore_command makes in sh before it ever calls ARCHIVE-GET — a prefetcher
 * would copy and fsync segments into its spool that nobody takes. A bucket, an encrypted archive or a `.gz`
 * segment costs a request, authentication or decompression: those are worth doing ahead of recovery.
 */
export function prefetchPays(archive: WalArchive, outcome: GetOutcome): boolean {
  if (outcome === 'missing') return false;
  return outcome === 'restored-from-gz' || walArchiveStorage(archive).localPath('') === undefined;
}

/** Starts a prefetcher for the segments after `name` unless one runs (recovery does not wait for it). */
export async function startPrefetch(
  config: BartConfig,
  server: ServerConfig,
  name: string,
  segmentSize: number,
): Promise<void> {
  if (parseArchiveFileName(name)?.kind !== 'segment' || !isValidWalSegmentSize(segmentSize)) return;
  const dir = prefetchDir(config, server);
  try {
    await ensureDir(dir, 0o700);
    if ((await liveLockHolder(dir, PREFETCH_LOCK)) !== undefined) return;
    const child = spawn(
      process.execPath,
      [
        bartScriptPath(),
        '-c',
        config.path,
        'ARCHIVE-GET',
        '-s',
        server.name,
        '--prefetch-segment-size',
        String(segmentSize),
        name,
        '-',
      ],
      { detached: true, stdio: 'ignore' },
    );
    await new Promise<void>((r) => {
      child.once('spawn', () => r());
      child.once('error', () => r());
    });
    child.unref();
  } catch (err) {
    log.debug(`no prefetch: ${errorMessage(err)}`);
  }
}

/**
 * Tells a running prefetcher which segment recovery asked for and ARCHIVE-GET fetched from the archive
 * (outside its window: a new timeline, a jump): it moves its window there rather than wait to go idle.
 */
export async function notePrefetchRequest(config: BartConfig, server: ServerConfig, name: string): Promise<void> {
  const dir = prefetchDir(config, server);
  await writeFileAtomic(join(dir, REQUESTED_FILE), name).catch(() => undefined);
}

/**
 * The prefetcher: keeps the archive_async_workers × AHEAD_PER_WORKER segments after the one recovery last took
 * on its timeline in the prefetch directory, each fetched through getWalFile (temp file, fsync, rename), then its
 * `.meta`. It stays while recovery takes them — ARCHIVE-GET moves a segment away, the window slides on — and
 * exits after IDLE_EXIT_MS without any taken, when a segment is missing from the archive (recovery will ask for
 * it, and the archive has nothing beyond), or on an error. When ARCHIVE-GET had to fetch a segment outside the
 * window itself (REQUESTED_FILE), the window moves there. Files outside the window are removed.
 */
export async function runPrefetch(
  config: BartConfig,
  server: ServerConfig,
  name: string,
  segmentSize: number,
): Promise<void> {
  const dir = prefetchDir(config, server);
  await ensureDir(dir, 0o700);
  let lock: CatalogLock;
  try {
    lock = await acquireLock(dir, PREFETCH_LOCK, 'ARCHIVE-GET prefetch');
  } catch {
    return;
  }
  const archive = openWalArchive(config, server);
  try {
    const count = server.archiveAsyncWorkers * AHEAD_PER_WORKER;
    let timeline = timelineFromName(name);
    let taken = segmentNumberFromName(name, segmentSize);
    let requested = await readFile(join(dir, REQUESTED_FILE), 'utf8').catch(() => '');
    let lastProgress = Date.now();
    for (;;) {
      const wanted = Array.from({ length: count }, (_, i) =>
        segmentName(timeline, taken + 1n + BigInt(i), segmentSize),
      );
      const keep = new Set(wanted.flatMap((n) => PREFETCH_SUFFIXES.map((suffix) => n + suffix)));
      for (const entry of await readdir(dir)) {
        if (parseArchiveFileName(entry.replace(/\.meta$/, '')) !== undefined && !keep.has(entry))
          await unlink(join(dir, entry)).catch(() => undefined);
      }
      if ((await fetchWindow(archive, dir, wanted, server.archiveAsyncWorkers)) === 'missing') return;
      // Wait until recovery takes the first segment of the window, asks for another, or goes quiet.
      for (;;) {
        await new Promise((r) => setTimeout(r, POLL_MS));
        const nowRequested = await readFile(join(dir, REQUESTED_FILE), 'utf8').catch(() => '');
        if (nowRequested !== requested && parseArchiveFileName(nowRequested)?.kind === 'segment') {
          requested = nowRequested;
          timeline = timelineFromName(nowRequested);
          taken = segmentNumberFromName(nowRequested, segmentSize);
          lastProgress = Date.now();
          break;
        }
        let firstPresent = wanted.length;
        for (let i = 0; i < wanted.length; i++) {
          if ((await stat(join(dir, wanted[i]!)).catch(() => undefined)) !== undefined) {
            firstPresent = i;
            break;
          }
        }
        if (firstPresent > 0) {
          taken += BigInt(firstPresent);
          lastProgress = Date.now();
          break;
        }
        if (Date.now() - lastProgress > IDLE_EXIT_MS) return;
      }
    }
  } catch (err) {
    log.debug(`prefetch ended: ${errorMessage(err)}`);
  } finally {
    await lock.release();
    await archive.close().catch(() => undefined);
  }
}

/**
 * Fetches the segments of `wanted` not yet in `dir`, `lanes` at a time; 'missing' when one is not in the archive
 * or cannot be fetched (the rest of the window is not fetched then).
 */
async function fetchWindow(
  archive: RepositoryStorage,
  dir: string,
  wanted: string[],
  lanes: number,
): Promise<'complete' | 'missing'> {
  let next = 0;
  let missing = false;
  const lane = async () => {
    while (!missing && next < wanted.length) {
      const seg = wanted[next++]!;
      const data = join(dir, seg);
      if ((await stat(`${data}.meta`).catch(() => undefined)) !== undefined) continue;
      try {
        const key = await findArchived(archive, seg);
        const st = key !== undefined ? await archive.stat(key) : undefined;
        if (key === undefined || st === undefined) {
          missing = true;
          return;
        }
        await unlink(data).catch(() => undefined);
        if ((await getWalFile(archive, seg, data)) === 'missing') {
          missing = true;
          return;
        }
        const provenance: Provenance = { key, size: st.size, modified: st.modified.getTime() };
        await writeFileAtomic(`${data}.meta`, JSON.stringify(provenance));
      } catch (err) {
        log.debug(`prefetch of ${seg} failed: ${errorMessage(err)}`);
        missing = true;
      }
    }
  };
  await Promise.all(Array.from({ length: lanes }, lane));
  return missing ? 'missing' : 'complete';
}
