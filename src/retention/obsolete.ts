// Concept: retention removal — obsolete backups and the archived WAL they alone needed removed from the catalog.

import type { BartConfig, ServerConfig } from '../config/types.js';
import { crashPoint } from '../util/crash-point.js';
import { fsyncDir } from '../util/fs-atomic.js';
import { log } from '../util/log.js';
import { serverLockHolder } from '../catalog/lock.js';
import { archiveNames, beingDeleted, listBackups, type CatalogEntry } from '../catalog/catalog.js';
import {
  BACKUPINFO_FILE,
  DELETING_SUFFIX,
  PARTIAL_SUFFIX,
  TOMBSTONE_FILE,
  serverCatalogDir,
} from '../catalog/layout.js';
import { joinKey, keyBaseName, type RepositoryStorage } from '../storage/storage.js';
import type { Leftover } from './leftovers.js';
import { descendantsBy } from './retention.js';
import type { ServerStorages } from './server-storages.js';
import { planWalCleanup, type WalCleanupPlan } from './wal-cleanup.js';

/** The archive files a removal would delete, with their total size. */
export interface WalRemoval {
  plan: WalCleanupPlan;
  bytes: number;
  /** True when the archive is left alone this time (a BACKUP in progress, an unreadable backupinfo). */
  skipped: boolean;
}

/** Names and sizes of the objects at the archive root, from its listing (no per-file request). */
async function archiveSizes(archive: RepositoryStorage): Promise<Map<string, number>> {
  const sizes = new Map<string, number>();
  for await (const page of archive.list('', { shallow: true })) for (const o of page.objects) sizes.set(o.key, o.size);
  return sizes;
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
  storages: ServerStorages,
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
  // its start is unknown, so nothing may go, unless it is being removed (or has a tombstone: being deleted).
  // Without renames (S3), `<id>` beside a `<id>.partial` is a BACKUP's unpublished data, not such a backup.
  const listed = new Set(entries.filter((e) => e.damage === undefined).map((e) => e.info.id));
  const names = new Set(await archiveNames(storages.repo, '', true));
  const unpublished = (n: string) => storages.repo.renamePrefix === undefined && names.has(n + PARTIAL_SUFFIX);
  const unreadable = [...names].filter(
    (n) =>
      /^\d+$/.test(n) && !listed.has(n) && !removed.has(n) && !beingDeleted(storages.repo, names, n) && !unpublished(n),
  );
  if (unreadable.length > 0) {
    return {
      plan: {
        remove: [],
        reason: `backup ${unreadable.sort().join(', ')} has no readable backupinfo (repair it with bart INIT -r -s ${server.name}), so archived WAL is left alone`,
      },
      bytes: 0,
      skipped: true,
    };
  }
  const sizes = await archiveSizes(storages.archive);
  const plan = planWalCleanup(
    [...sizes.keys()],
    remaining.map((e) => ({
      id: e.info.id,
      timeline: e.info.timeline,
      startWalFile: e.info.startWalFile,
      walSegmentSize: e.info.walSegmentSize,
    })),
  );
  let bytes = 0;
  for (const name of plan.remove) bytes += sizes.get(name) ?? 0;
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
 * Takes a backup out of the catalog in one step that cannot be seen half done, and returns the
 * prefixes to remove afterwards, in order (the marker of the deletion last).
 * - POSIX (renamePrefix): the directory is renamed to `<id>.deleting` (atomic, directory fsynced).
 * - Without renames (S3): a tombstone `<id>.deleting/marker` is written first (from then on neither
 *   `<id>` nor a stale `<id>.partial` is a backup: catalog.ts beingDeleted), then `<id>/backupinfo`
 *   is removed, so that even a reader that ignored tombstones would not take it for a backup.
 */
async function takeOut(repo: RepositoryStorage, entry: CatalogEntry): Promise<string[]> {
  const id = entry.info.id;
  const deleting = id + DELETING_SUFFIX;
  if (repo.renamePrefix !== undefined) {
    await repo.renamePrefix(entry.key, deleting);
    return [deleting];
  }
  const tombstone = { pid: process.pid, backup: id, time: new Date().toISOString() };
  await repo.put(joinKey(deleting, TOMBSTONE_FILE), Buffer.from(JSON.stringify(tombstone) + '\n'));
  crashPoint('delete:tombstoned');
  await repo.remove(joinKey(entry.key, BACKUPINFO_FILE));
  return [id, id + PARTIAL_SUFFIX, deleting];
}

/**
 * Removes backups (pass them children first, see withDescendants), then the archived WAL no
 * remaining backup needs, then leftovers. The caller holds the server lock. Crash safety:
 * 1. each backup is first taken out of the catalog atomically ({@link takeOut}: renamed to
 *    `<id>.deleting`, or tombstoned on S3), so a crash never leaves a half-deleted backup that
 *    looks like a backup (nor like a damaged one);
 * 2. the WAL plan is computed afterwards from the backups still in the catalog, so at every instant
 *    the archive holds what the remaining backups need;
 * 3. the backups' objects, then their `.deleting` markers, and leftovers are removed last; a crash
 *    leaves them for the next MANAGE -l to list and MANAGE -d to remove.
 * Test hook: crash points `delete:tombstoned` (S3 only), `delete:renamed`, `delete:wal`,
 * `delete:before-rm`, `delete:after-rm`, `delete:leftovers` (PGBART_CRASH_AT, util/crash-point.ts).
 */
export async function removeFromCatalog(
  config: BartConfig,
  server: ServerConfig,
  storages: ServerStorages,
  targets: readonly CatalogEntry[],
  leftovers: readonly Leftover[],
): Promise<RemovalResult> {
  const { repo, archive } = storages;
  const doomed: string[][] = [];
  for (const entry of targets) {
    doomed.push(await takeOut(repo, entry));
    log.info(
      `backup ${entry.info.id}${entry.info.name ? ` (${entry.info.name})` : ''} of server ${server.name} removed from the catalog`,
    );
    crashPoint('delete:renamed');
  }
  const entries = await listBackups(config, server, repo);
  const wal = await planWalRemoval(config, server, storages, entries, new Set());
  let walFiles = 0;
  for (const name of wal.plan.remove) {
    await archive.remove(name);
    walFiles++;
    crashPoint('delete:wal');
  }
  const { localDirs } = storages;
  if (walFiles > 0) {
    // POSIX: the unlinks must survive a crash (S3: a completed DELETE is durable).
    if (localDirs) await fsyncDir(localDirs.archive);
    log.info(
      `deleted ${walFiles} archived WAL/MBM file(s) of server ${server.name} no backup needs (${wal.plan.reason})`,
    );
  } else if (wal.skipped) {
    log.warning(`server ${server.name}: ${wal.plan.reason}`);
  }
  crashPoint('delete:before-rm');
  for (const prefixes of doomed) for (const p of prefixes) await repo.removePrefix(p);
  crashPoint('delete:after-rm');
  let removedLeftovers = 0;
  for (const leftover of leftovers) {
    await leftover.remove();
    removedLeftovers++;
    log.info(`removed ${leftover.description}: ${keyBaseName(leftover.path)}`);
    crashPoint('delete:leftovers');
  }
  if ((doomed.length > 0 || removedLeftovers > 0) && localDirs) await fsyncDir(localDirs.catalog);
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
