// Retention leftovers: failed backups, half-deleted backups and temp files left by crashed commands.

import { PosixStorage } from '../storage/posix/posix-storage.js';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { isErrnoError } from '../util/errors.js';
import { readBackupInfo } from '../catalog/backup-info.js';
import { serverLockHolder } from '../catalog/lock.js';
import { processAlive } from '../catalog/catalog.js';
import { PARTIAL_SUFFIX, serverCatalogDir } from '../catalog/layout.js';

/** Suffix a backup directory gets just before it is removed (atomic rename), see {@link DELETING_SUFFIX}. */
export const DELETING_SUFFIX = '.deleting';

/** What kind of leftover of a crashed or interrupted command a file is. */
export type LeftoverKind = 'failed-backup' | 'deleting-backup' | 'temp-file';

/** A file or directory no backup uses, left by a command that died (kill -9, power cut, full disk). */
export interface Leftover {
  kind: LeftoverKind;
  path: string;
  /** One line for MANAGE -l. */
  description: string;
  /** Bytes it occupies (directories: summed). */
  bytes: number;
}

/** Temp files pgbart writes before renaming into place: `.<name>.tmp-<pid>-<base36 time>` (util/fs-atomic). */
const TEMP_RE = /^\..+\.tmp-(\d+)-[0-9a-z]+$/;

async function names(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if (isErrnoError(err) && (err.code === 'ENOENT' || err.code === 'ENOTDIR')) return [];
    throw err;
  }
}

/** Bytes under a path (files summed, symlinks not followed); vanishing entries count 0. */
export async function treeBytes(path: string): Promise<number> {
  let st;
  try {
    st = await stat(path);
  } catch {
    return 0;
  }
  if (!st.isDirectory()) return st.size;
  let total = 0;
  for (const name of await names(path)) total += await treeBytes(join(path, name));
  return total;
}

/**
 * Finds the leftovers of crashed commands in a server's catalog: `<id>.partial` directories whose
 * BACKUP is dead (no live process holds the server lock, or its backupinfo PID is gone; without a
 * readable backupinfo only when no BACKUP holds the lock, since a live one writes it right after mkdir), `<id>.deleting` directories of an
 * interrupted DELETE / MANAGE -d, and temp files of dead processes in the catalog directory, the
 * archive and at the top of each backup directory. Pass `lockHeld` when the caller holds the
 * server lock (then no BACKUP can be running).
 */
export async function findLeftovers(config: BartConfig, server: ServerConfig, lockHeld: boolean): Promise<Leftover[]> {
  const serverDir = serverCatalogDir(config, server);
  const out: Leftover[] = [];
  const holder = lockHeld ? undefined : await serverLockHolder(serverDir);
  const tempIn = async (dir: string) => {
    for (const name of await names(dir)) {
      const m = TEMP_RE.exec(name);
      if (!m || processAlive(Number(m[1]))) continue;
      const path = join(dir, name);
      out.push({
        kind: 'temp-file',
        path,
        description: `temp file of dead process ${m[1]}`,
        bytes: await treeBytes(path),
      });
    }
  };
  for (const name of (await names(serverDir)).sort()) {
    const path = join(serverDir, name);
    if (/^\d+$/.test(name)) {
      await tempIn(path);
    } else if (name.endsWith(PARTIAL_SUFFIX) && /^\d+$/.test(name.slice(0, -PARTIAL_SUFFIX.length))) {
      let pid: number | undefined;
      let readable = true;
      try {
        pid = (await readBackupInfo(new PosixStorage(serverDir), name)).pid; // POSIX shim: migrate
      } catch {
        readable = false;
      }
      // Every BACKUP holds the server lock while it writes: without a live holder (or when we hold it)
      // a .partial is dead even if its PID now belongs to some other process.
      const dead = lockHeld || holder === undefined || !readable || pid === undefined || !processAlive(pid);
      if (dead && (readable || holder === undefined))
        out.push({
          kind: 'failed-backup',
          path,
          description: `backup directory of a BACKUP that died${pid ? ` (pid ${pid})` : ''}`,
          bytes: await treeBytes(path),
        });
    } else if (name.endsWith(DELETING_SUFFIX) && /^\d+$/.test(name.slice(0, -DELETING_SUFFIX.length))) {
      out.push({
        kind: 'deleting-backup',
        path,
        description: 'backup directory whose deletion was interrupted',
        bytes: await treeBytes(path),
      });
    }
  }
  await tempIn(serverDir);
  if (server.archivePath !== serverDir) await tempIn(server.archivePath);
  return out;
}
