// Concept: the asynchronous WAL archiver — one process per server that pushes queued and look-ahead WAL into the repository in parallel.

import { copyFile, readdir, rm, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { processAlive } from '../catalog/catalog.js';
import { acquireLock, type CatalogLock } from '../catalog/lock.js';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { openWalArchive } from '../storage/open-repository.js';
import type { RepositoryStorage } from '../storage/storage.js';
import { crashPoint } from '../util/crash-point.js';
import { errorMessage, isErrnoError } from '../util/errors.js';
import { ensureDir } from '../util/fs-atomic.js';
import { log } from '../util/log.js';
import { parseArchiveFileName } from '../wal/segment-name.js';
import {
  clearLastError,
  dequeue,
  doneMarkers,
  fileIdentity,
  prepareAsyncSpool,
  queuedFiles,
  recordLastError,
  spoolPaths,
  writeDoneMarker,
  type SpoolPaths,
} from './async-spool.js';
import { mapSpooledSegments, prepareSpool } from './push-mbm.js';
import { mapsAtPush, mbmSpoolDir } from './push-mbm-policy.js';
import { pushWalFile } from './wal-archive.js';
import { forEachLimited } from '../util/for-each-limited.js';

/** Name of the archiver's lock in the spool directory (`archiver.lock`). */
export const ARCHIVER_LOCK = 'archiver';
/** How often an idle archiver looks at the queue and at archive_status. */
const POLL_MS = 50;
/** Longest wait between two attempts while the repository fails. */
const MAX_BACKOFF_MS = 10_000;

/** Options of {@link runArchiver}. */
export interface ArchiverOptions {
  /**
   * The server's pg_wal directory, when it is on this host (the archive_command's %p told where):
   * the archiver then pushes the files of `archive_status/*.ready` before PostgreSQL asks for them.
   */
  walDir?: string;
  /** The archiver exits after this long with nothing to do. */
  idleMs: number;
}

/** One file to push: from the queue (acknowledged already) or from pg_wal (look-ahead, not acknowledged). */
interface WorkItem {
  name: string;
  from: 'queue' | 'wal';
  path: string;
}

/**
 * Runs the archiver of one server until it has been idle for `idleMs`; returns at once when another
 * archiver holds the lock. Why a process started on demand by ARCHIVE-PUSH rather than a task of the
 * bart-scanner daemon: archiving must not depend on a daemon someone has to start (and restart after
 * an upgrade or a reboot); PostgreSQL's next archive_command restarts an archiver that died, and an
 * idle server costs nothing. Every failure is recorded in the spool's `last-error`, where the next
 * ARCHIVE-PUSH (once the queue is full) and CHECK-CONFIG report it.
 */
export async function runArchiver(config: BartConfig, server: ServerConfig, options: ArchiverOptions): Promise<void> {
  const paths = spoolPaths(config, server);
  await prepareAsyncSpool(paths);
  let lock: CatalogLock | undefined = await takeLock(paths);
  if (lock === undefined) return;
  const archive = openWalArchive(config, server);
  const stage = join(paths.root, 'stage');
  try {
    // Staged copies of a dead archiver: never trusted, the file is staged again from pg_wal.
    await rm(stage, { recursive: true, force: true });
    await ensureDir(stage, 0o700);
    await removeDeadTemps(paths);
    const mapper = new Mapper(config, server, archive);
    let idleSince = Date.now();
    let failures = 0;
    for (;;) {
      const work = await collectWork(paths, options.walDir);
      if (work.length === 0) {
        if (Date.now() - idleSince < options.idleMs) {
          await sleep(POLL_MS);
          continue;
        }
        await removeStaleMarkers(paths, options.walDir);
        await lock.release();
        lock = undefined;
        // An ARCHIVE-PUSH that queued a file while it saw our lock counts on us: look once more.
        if ((await queuedFiles(paths)).length === 0) break;
        lock = await takeLock(paths);
        if (lock === undefined) break;
        continue;
      }
      const ok = await pushAll(work, server.archiveAsyncWorkers, (item) =>
        pushOne(archive, paths, stage, item, mapper),
      );
      await mapper.idle();
      if (ok) {
        failures = 0;
        idleSince = Date.now();
        await clearLastError(paths);
      } else {
        failures++;
        await sleep(Math.min(MAX_BACKOFF_MS, 100 * 2 ** failures));
      }
    }
  } finally {
    await lock?.release();
    await archive.close().catch(() => undefined);
  }
}

/** Takes the archiver lock; undefined when another archiver holds it. */
async function takeLock(paths: SpoolPaths): Promise<CatalogLock | undefined> {
  try {
    return await acquireLock(paths.root, ARCHIVER_LOCK, 'ARCHIVER');
  } catch (err) {
    log.debug(`another archiver runs: ${errorMessage(err)}`);
    return undefined;
  }
}

/** Queued files, then pg_wal files marked .ready that are neither queued nor pushed already; by name. */
async function collectWork(paths: SpoolPaths, walDir: string | undefined): Promise<WorkItem[]> {
  const queued = await queuedFiles(paths);
  const items: WorkItem[] = queued.map((name) => ({ name, from: 'queue', path: join(paths.queue, name) }));
  if (walDir !== undefined) {
    const skip = new Set([...queued, ...(await doneMarkers(paths))]);
    let status: string[] = [];
    try {
      status = await readdir(join(walDir, 'archive_status'));
    } catch (err) {
      if (!(isErrnoError(err) && err.code === 'ENOENT'))
        log.debug(`cannot look ahead in "${walDir}": ${errorMessage(err)}`);
    }
    for (const entry of status) {
      if (!entry.endsWith('.ready')) continue;
      const name = entry.slice(0, -'.ready'.length);
      if (parseArchiveFileName(name) === undefined || skip.has(name)) continue;
      items.push({ name, from: 'wal', path: join(walDir, name) });
    }
  }
  return items.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Runs `fn` on every item, `workers` at a time; true when all succeeded. */
async function pushAll(items: WorkItem[], workers: number, fn: (item: WorkItem) => Promise<boolean>): Promise<boolean> {
  let ok = true;
  await forEachLimited(items, workers, async (item) => {
    if (!(await fn(item))) ok = false;
  });
  return ok;
}

/**
 * Pushes one file through the same path as synchronous ARCHIVE-PUSH (pushWalFile: create-if-absent,
 * durable, identical content accepted, different content refused). A queued file leaves the queue
 * only after that. A pg_wal file is first copied into the stage and used only if pg_wal still has
 * the very file read (same identity after the copy): PostgreSQL may recycle a segment it considers
 * archived and write new WAL into the same inode, and those bytes must never reach the archive
 * under the old name. Its done marker is written only after the push is durable.
 */
async function pushOne(
  archive: RepositoryStorage,
  paths: SpoolPaths,
  stage: string,
  item: WorkItem,
  mapper: Mapper,
): Promise<boolean> {
  let source = item.path;
  let identity: string | undefined;
  try {
    if (item.from === 'wal') {
      try {
        identity = await fileIdentity(item.path);
      } catch (err) {
        if (isErrnoError(err) && err.code === 'ENOENT') return true; // archived and recycled meanwhile
        throw err;
      }
      source = join(stage, item.name);
      await copyFile(item.path, source);
      const after = await fileIdentity(item.path).catch(() => undefined);
      if (after !== identity) {
        log.debug(`${item.name} changed in pg_wal while it was staged; left to the archive_command`);
        return true;
      }
    }
    const copyTo = await mapper.copyFor(item.name);
    const outcome = await pushWalFile(archive, source, copyTo !== undefined ? { copyTo } : {});
    log.fileOnly('INFO', `archived WAL file "${item.name}" asynchronously (${outcome}, from ${item.from})`);
    if (item.from === 'queue') {
      crashPoint('async:pushed');
      await dequeue(paths, item.name);
    } else {
      crashPoint('async:before-marker');
      await writeDoneMarker(paths, item.name, identity!);
      crashPoint('async:after-marker');
    }
    if (copyTo !== undefined) mapper.schedule();
    return true;
  } catch (err) {
    const message = `cannot archive WAL file "${item.name}" asynchronously: ${errorMessage(err)}`;
    log.error(message);
    await recordLastError(paths, message);
    return false;
  } finally {
    if (source !== item.path) await unlink(source).catch(() => undefined);
  }
}

/**
 * MBMs made while the archiver holds the segment, as synchronous ARCHIVE-PUSH makes them
 * (push-mbm.ts): only for an object-store archive of a server with incremental backups; one mapping
 * pass at a time, since a pass reads the whole MBM spool.
 */
class Mapper {
  private spool: string | undefined | null = null;
  private running: Promise<void> = Promise.resolve();
  private pending = false;

  constructor(
    private readonly config: BartConfig,
    private readonly server: ServerConfig,
    private readonly archive: RepositoryStorage,
  ) {}

  /** Where the push keeps a copy of `name` for its MBM, or undefined. */
  async copyFor(name: string): Promise<string | undefined> {
    if (!mapsAtPush(this.server, this.archive, name)) return undefined;
    if (this.spool === null) this.spool = await prepareSpool(mbmSpoolDir(this.config, this.server));
    return this.spool !== undefined ? join(this.spool, name) : undefined;
  }

  /** Maps what the spool holds, after the pass that runs now. */
  schedule(): void {
    if (this.pending || this.spool === undefined || this.spool === null) return;
    this.pending = true;
    const dir = this.spool;
    this.running = this.running.then(async () => {
      this.pending = false;
      await mapSpooledSegments(this.archive, dir);
    });
  }

  /** Waits for the mapping passes scheduled so far. */
  async idle(): Promise<void> {
    await this.running;
  }
}

/** Removes markers PostgreSQL no longer needs: their file is no longer waiting in archive_status. */
async function removeStaleMarkers(paths: SpoolPaths, walDir: string | undefined): Promise<void> {
  if (walDir === undefined) return;
  for (const name of await doneMarkers(paths)) {
    const ready = await stat(join(walDir, 'archive_status', `${name}.ready`)).catch(() => undefined);
    if (ready === undefined) await unlink(join(paths.done, name)).catch(() => undefined);
  }
}

/** Temp files (`.<name>.tmp-<pid>-<suffix>`) of ARCHIVE-PUSHes that died half way: their file was never acknowledged. */
async function removeDeadTemps(paths: SpoolPaths): Promise<void> {
  for (const dir of [paths.queue, paths.done]) {
    for (const n of await readdir(dir).catch(() => [] as string[])) {
      const m = /^\..+\.tmp-(\d+)-[0-9a-z]+$/.exec(n);
      if (m && !processAlive(Number(m[1]))) await unlink(join(dir, n)).catch(() => undefined);
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
