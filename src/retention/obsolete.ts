// Retention removal: obsolete backups and the archived WAL they alone needed removed from the catalog.

import { PosixStorage } from '../storage/posix/posix-storage.js';
import { rename, rm, stat, unlink } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { crashPoint } from '../util/crash-point.js';
import { isErrnoError } from '../util/errors.js';
import { fsyncDir } from '../util/fs-atomic.js';
import { log } from '../util/log.js';
import { serverLockHolder } from '../catalog/lock.js';
import { archiveNames, listBackups, type CatalogEntry } from '../catalog/catalog.js';
import { serverCatalogDir } from '../catalog/layout.js';
import { DELETING_SUFFIX, type Leftover } from './leftovers.js';
import { descendantsBy } from './retention.js';
import { planWalCleanup, type WalCleanupPlan } from './wal-cleanup.js';

/** The archive files a removal would delete, with their total size. */
export interface WalRemoval {
  plan: WalCleanupPlan;
  bytes: number;
  /** True when the archive is left alone this time (a BACKUP in progress, an unreadable backupinfo). */
  skipped: boolean;
}

async function sizeOf(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch {
    return 0;
  }
}

/**
 * What the WAL-retention rule ({@link planWalCleanup}) removes from the archive once `removed`
 * backups are gone: the backups that stay are every other complete backup, whatever its status
 * (an obsolete backup still restores until it is deleted). While a BACKUP is in progress its start
 * is unknown, so the archive is left alone.
 */
export async function planWalRemoval(
  config: BartConfig,
  server: ServerConfig,
  entries: readonly CatalogEntry[],
  removed: ReadonlySet<string>,
): Promise<WalRemoval> {
  const remaining = entries.filter((e) => e.complete && !removed.has(e.info.id));
  // A BACKUP in progress holds the server lock; a .partial whose PID merely looks alive (reused) does not count.
  const holder = await serverLockHolder(serverCatalogDir(config, server));
  if (
    holder !== undefined &&
    holder.pid !== process.pid &&
    entries.some((e) => !e.complete && e.info.status === 'in progress')
  ) {
    return {
      plan: { remove: [], reason: 'a BACKUP is in progress, so archived WAL is left alone this time' },
      bytes: 0,
      skipped: true,
    };
  }
  // A backup whose backupinfo cannot be read (listed as damaged, or not at all) may come back with INIT -r:
  // its start is unknown, so nothing may go, unless it is being removed.
  const listed = new Set(entries.filter((e) => e.damage === undefined).map((e) => e.info.id));
  const unreadable = (await archiveNames(new PosixStorage(serverCatalogDir(config, server)), '', true)).filter(
    // POSIX shim: migrate
    (n) => /^\d+$/.test(n) && !listed.has(n) && !removed.has(n),
  );
  if (unreadable.length > 0) {
    return {
      plan: {
        remove: [],
        reason: `backup ${unreadable.join(', ')} has no readable backupinfo (repair it with bart INIT -r -s ${server.name}), so archived WAL is left alone`,
      },
      bytes: 0,
      skipped: true,
    };
  }
  const plan = planWalCleanup(
    await archiveNames(new PosixStorage(server.archivePath)), // POSIX shim: migrate
    remaining.map((e) => ({
      id: e.info.id,
      timeline: e.info.timeline,
      startWalFile: e.info.startWalFile,
      walSegmentSize: e.info.walSegmentSize,
    })),
  );
  let bytes = 0;
  for (const name of plan.remove) bytes += await sizeOf(join(server.archivePath, name));
  return { plan, bytes, skipped: false };
}

/** What a removal did. */
export interface RemovalResult {
  backups: string[];
  walFiles: number;
  walBytes: number;
  leftovers: number;
}

/**
 * Removes backups (pass them children first, see withDescendants), then the archived WAL no
 * remaining backup needs, then leftovers. The caller holds the server lock. Crash safety:
 * 1. each backup directory is first renamed to `<id>.deleting` (atomic, directory fsynced), so a
 *    crash never leaves a half-deleted directory that looks like a backup;
 * 2. the WAL plan is computed afterwards from the backups still in the catalog, so at every instant
 *    the archive holds what the remaining backups need;
 * 3. the `.deleting` directories and leftovers are removed last; a crash leaves them for the next
 *    MANAGE -l to list and MANAGE -d to remove.
 * Test hook: crash points `delete:renamed`, `delete:wal`, `delete:before-rm`, `delete:after-rm`,
 * `delete:leftovers` (PGBART_CRASH_AT, util/crash-point.ts).
 */
export async function removeFromCatalog(
  config: BartConfig,
  server: ServerConfig,
  targets: readonly CatalogEntry[],
  leftovers: readonly Leftover[],
): Promise<RemovalResult> {
  const serverDir = serverCatalogDir(config, server);
  const doomed: string[] = [];
  for (const entry of targets) {
    const to = join(serverDir, entry.info.id + DELETING_SUFFIX);
    await rename(entry.storage.localPath(entry.key)!, to); // POSIX shim: migrate
    await fsyncDir(serverDir);
    doomed.push(to);
    log.info(
      `backup ${entry.info.id}${entry.info.name ? ` (${entry.info.name})` : ''} of server ${server.name} removed from the catalog`,
    );
    crashPoint('delete:renamed');
  }
  const entries = await listBackups(config, server);
  const wal = await planWalRemoval(config, server, entries, new Set());
  let walFiles = 0;
  for (const name of wal.plan.remove) {
    try {
      await unlink(join(server.archivePath, name));
      walFiles++;
    } catch (err) {
      if (!isErrnoError(err) || err.code !== 'ENOENT') throw err;
    }
    crashPoint('delete:wal');
  }
  if (walFiles > 0) {
    await fsyncDir(server.archivePath);
    log.info(
      `deleted ${walFiles} archived WAL/MBM file(s) of server ${server.name} no backup needs (${wal.plan.reason})`,
    );
  } else if (wal.skipped) {
    log.warning(`server ${server.name}: ${wal.plan.reason}`);
  }
  crashPoint('delete:before-rm');
  for (const dir of doomed) await rm(dir, { recursive: true, force: true });
  crashPoint('delete:after-rm');
  let removedLeftovers = 0;
  for (const leftover of leftovers) {
    await rm(leftover.path, { recursive: true, force: true });
    removedLeftovers++;
    log.info(`removed ${leftover.description}: ${basename(leftover.path)}`);
    crashPoint('delete:leftovers');
  }
  if (doomed.length > 0 || removedLeftovers > 0) await fsyncDir(serverDir);
  return { backups: targets.map((t) => t.info.id), walFiles, walBytes: wal.bytes, leftovers: removedLeftovers };
}

/** A backup and its incremental descendants (children first), for catalog entries. */
export function entryWithDescendants(entries: readonly CatalogEntry[], id: string): CatalogEntry[] {
  return descendantsBy(entries, id, (e) => ({ id: e.info.id, parent: e.info.parent }));
}

/** Backup label for messages: `1700000000000 (name)`. */
export function backupLabel(entry: CatalogEntry): string {
  return `${entry.info.id}${entry.info.name ? ` (${entry.info.name})` : ''}`;
}

/** Sorts backups children first (an incremental is always taken after its parent: higher identifier). */
export function childrenFirst(entries: readonly CatalogEntry[]): CatalogEntry[] {
  return [...entries].sort((a, b) =>
    BigInt(b.info.id) > BigInt(a.info.id) ? 1 : BigInt(b.info.id) < BigInt(a.info.id) ? -1 : 0,
  );
}

/** Complete backups MANAGE -d deletes: the obsolete ones and every incremental depending on them, children first. */
export function obsoleteTargets(entries: readonly CatalogEntry[]): CatalogEntry[] {
  const complete = entries.filter((e) => e.complete);
  const ids = new Set<string>();
  for (const e of complete)
    if (e.info.status === 'obsolete') for (const d of entryWithDescendants(complete, e.info.id)) ids.add(d.info.id);
  return childrenFirst(complete.filter((e) => ids.has(e.info.id)));
}
