// Concept: retention leftovers — failed backups, half-deleted backups and temp files left by crashed commands.

import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { isErrnoError } from '../util/errors.js';
import { readBackupInfo } from '../catalog/backup-info.js';
import { serverLockHolder } from '../catalog/lock.js';
import { archiveNames, beingDeleted, processAlive } from '../catalog/catalog.js';
import { BACKUPINFO_FILE, DELETING_SUFFIX, PARTIAL_SUFFIX, serverCatalogDir } from '../catalog/layout.js';
import { joinKey, type RepositoryStorage } from '../storage/storage.js';
import type { ServerStorages } from './server-storages.js';

export { DELETING_SUFFIX } from '../catalog/layout.js';

/** What kind of leftover of a crashed or interrupted command a file is. */
export type LeftoverKind = 'failed-backup' | 'deleting-backup' | 'temp-file';

/** Something no backup uses, left by a command that died (kill -9, power cut, full disk, lost connection). */
export interface Leftover {
  kind: LeftoverKind;
  /** Where it is, for people: a path on POSIX, `s3://…/<key>` on S3. */
  path: string;
  /** One line for MANAGE -l. */
  description: string;
  /** Bytes it occupies (directories and prefixes: summed). */
  bytes: number;
  /**
   * Removes it. The parts of a backup go data first, marker (`.partial` backupinfo, tombstone)
   * last, so that a crash half way leaves something the next MANAGE -l still lists as a leftover,
   * never a prefix without backupinfo that would look like a damaged backup.
   */
  remove(): Promise<void>;
}

/** Temp files the POSIX driver and util/fs-atomic write before renaming into place: `.<name>.tmp-<pid>-<suffix>`. */
const TEMP_RE = /^\..+\.tmp-(\d+)-[0-9a-z]+$/;
/** CHECK-CONFIG's test object (storage/s3/check-bucket.ts), left behind when CHECK-CONFIG was killed. */
const CHECK_OBJECT_RE = /^\.pgbart-check-(\d+)-[0-9a-f]+$/;

async function dirNames(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if (isErrnoError(err) && (err.code === 'ENOENT' || err.code === 'ENOTDIR')) return [];
    throw err;
  }
}

/** Bytes under a local path (files summed, symlinks not followed); vanishing entries count 0. */
export async function treeBytes(path: string): Promise<number> {
  let st;
  try {
    st = await stat(path);
  } catch {
    return 0;
  }
  if (!st.isDirectory()) return st.size;
  let total = 0;
  for (const name of await dirNames(path)) total += await treeBytes(join(path, name));
  return total;
}

/**
 * Bytes of every object below `prefix`, from the listing (no per-object request); on POSIX summed
 * on the file system, temp files included (they take space too).
 */
export async function prefixBytes(storage: RepositoryStorage, prefix: string): Promise<number> {
  const local = storage.localPath(prefix);
  if (local !== undefined) return treeBytes(local);
  let total = 0;
  for await (const page of storage.list(prefix)) for (const o of page.objects) total += o.size;
  return total;
}

/**
 * Finds the leftovers of crashed commands in a server's catalog and WAL archive:
 * - `<id>.partial` whose BACKUP is dead (no live process holds the server lock, or its backupinfo PID
 *   is gone; without a readable backupinfo only when no BACKUP holds the lock, since a live one
 *   writes it first). On a storage without atomic renames (S3) the backup's objects are under `<id>`
 *   and go with it, unless `<id>/backupinfo` exists: then the backup was published and only the
 *   stale marker is left.
 * - `<id>.deleting` of an interrupted DELETE / MANAGE -d: POSIX, the renamed directory; S3, the
 *   tombstone, with what is left of `<id>` (and of a stale `<id>.partial`).
 * - temp files of dead processes: POSIX driver temp files (`.<name>.tmp-…`, never listed by the
 *   storage, so found on the file system, {@link ServerStorages.localDirs}) in the catalog directory,
 *   the archive and at the top of each backup directory; CHECK-CONFIG test objects at the catalog root.
 * Pass `lockHeld` when the caller holds the server lock (then no BACKUP can be running). The
 * returned leftovers remove themselves through the storages: keep them open until then.
 */
export async function findLeftovers(
  config: BartConfig,
  server: ServerConfig,
  lockHeld: boolean,
  storages: ServerStorages,
): Promise<Leftover[]> {
  const { repo, localDirs } = storages;
  const out: Leftover[] = [];
  // Locks are on the BART host even for an S3 repository (catalog/lock.ts).
  const holder = lockHeld ? undefined : await serverLockHolder(serverCatalogDir(config, server));
  const renames = repo.renamePrefix !== undefined;
  const where = (key: string) => joinKey(repo.location, key);
  const removePrefixes = (keys: string[]) => async () => {
    for (const k of keys) await repo.removePrefix(k);
  };
  const tempIn = async (dir: string) => {
    for (const name of (await dirNames(dir)).sort()) {
      const m = TEMP_RE.exec(name);
      if (!m || processAlive(Number(m[1]))) continue;
      const path = join(dir, name);
      out.push({
        kind: 'temp-file',
        path,
        description: `temp file of dead process ${m[1]}`,
        bytes: await treeBytes(path),
        remove: () => rm(path, { recursive: true, force: true }),
      });
    }
  };
  const checkObjectsIn = async (storage: RepositoryStorage) => {
    for await (const page of storage.list('', { shallow: true })) {
      for (const o of page.objects) {
        const m = CHECK_OBJECT_RE.exec(o.key);
        if (!m || processAlive(Number(m[1]))) continue;
        out.push({
          kind: 'temp-file',
          path: joinKey(storage.location, o.key),
          description: `test object of a CHECK-CONFIG that died (pid ${m[1]})`,
          bytes: o.size,
          remove: () => storage.remove(o.key),
        });
      }
    }
  };

  const names = new Set(await archiveNames(repo, '', true));
  for (const name of [...names].sort()) {
    if (/^\d+$/.test(name)) {
      if (localDirs) await tempIn(join(localDirs.catalog, name));
    } else if (name.endsWith(PARTIAL_SUFFIX) && /^\d+$/.test(name.slice(0, -PARTIAL_SUFFIX.length))) {
      const id = name.slice(0, -PARTIAL_SUFFIX.length);
      if (beingDeleted(repo, names, id)) continue; // the tombstone's leftover takes it along
      let pid: number | undefined;
      let readable = true;
      try {
        pid = (await readBackupInfo(repo, name)).pid;
      } catch {
        readable = false;
      }
      // Every BACKUP holds the server lock while it writes: without a live holder (or when we hold it)
      // a .partial is dead even if its PID now belongs to some other process.
      const dead = lockHeld || holder === undefined || !readable || pid === undefined || !processAlive(pid);
      if (!dead || !(readable || holder === undefined)) continue;
      const byPid = pid ? ` (pid ${pid})` : '';
      if (renames) {
        out.push({
          kind: 'failed-backup',
          path: where(name),
          description: `backup directory of a BACKUP that died${byPid}`,
          bytes: await prefixBytes(repo, name),
          remove: removePrefixes([name]),
        });
      } else if (names.has(id) && (await repo.stat(joinKey(id, BACKUPINFO_FILE))) !== undefined) {
        // Published (its backupinfo was written last), then killed before it removed its marker.
        out.push({
          kind: 'failed-backup',
          path: where(name),
          description: `stale marker of backup ${id}, published by a BACKUP that died before removing it${byPid}`,
          bytes: await prefixBytes(repo, name),
          remove: removePrefixes([name]),
        });
      } else {
        const data = names.has(id) ? [id] : [];
        out.push({
          kind: 'failed-backup',
          path: where(name),
          description: `marker and objects (${where(id)}) of a BACKUP that died${byPid}`,
          bytes: (await prefixBytes(repo, name)) + (data.length > 0 ? await prefixBytes(repo, id) : 0),
          remove: removePrefixes([...data, name]),
        });
      }
    } else if (name.endsWith(DELETING_SUFFIX) && /^\d+$/.test(name.slice(0, -DELETING_SUFFIX.length))) {
      const id = name.slice(0, -DELETING_SUFFIX.length);
      if (renames) {
        out.push({
          kind: 'deleting-backup',
          path: where(name),
          description: 'backup directory whose deletion was interrupted',
          bytes: await prefixBytes(repo, name),
          remove: removePrefixes([name]),
        });
      } else {
        // The tombstone goes last: until then, whatever is left of the backup is not taken for one.
        const parts = [id, id + PARTIAL_SUFFIX].filter((p) => names.has(p));
        let bytes = await prefixBytes(repo, name);
        for (const p of parts) bytes += await prefixBytes(repo, p);
        out.push({
          kind: 'deleting-backup',
          path: where(name),
          description: `tombstone of backup ${id}, whose deletion was interrupted${parts.length > 0 ? ` (objects left under ${parts.map(where).join(', ')})` : ''}`,
          bytes,
          remove: removePrefixes([...parts, name]),
        });
      }
    }
  }
  if (localDirs) {
    await tempIn(localDirs.catalog);
    if (localDirs.archive !== localDirs.catalog) await tempIn(localDirs.archive);
  }
  // CHECK-CONFIG writes its test object at the catalog root only (never into the archive, whose
  // listing may be millions of segments long).
  await checkObjectsIn(repo);
  return out;
}
