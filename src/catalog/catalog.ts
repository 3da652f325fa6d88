import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { BartError, isErrnoError } from '../util/errors.js';
import { log } from '../util/log.js';
import { readBackupInfo, type BackupInfo } from './backup-info.js';
import { GZIP_SUFFIX, PARTIAL_SUFFIX, serverCatalogDir } from './layout.js';

/**
 * Names in a directory of the repository: a server's catalog or WAL archive (none when it does not
 * exist yet).
 */
export async function archiveNames(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if (isErrnoError(err) && err.code === 'ENOENT') return [];
    throw err;
  }
}

/** The archived copy of WAL file `name` in `archiveDir`, plain or gzip-compressed; undefined when absent. */
export async function findArchived(archiveDir: string, name: string): Promise<string | undefined> {
  const plain = join(archiveDir, name);
  if (await exists(plain)) return plain;
  const gz = plain + GZIP_SUFFIX;
  if (await exists(gz)) return gz;
  return undefined;
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (err) {
    if (isErrnoError(err) && err.code === 'ENOENT') return false;
    throw err;
  }
}

/** A backup found in the catalog. */
export interface CatalogEntry {
  info: BackupInfo;
  /** Its directory (`<id>` or `<id>.partial`). */
  dir: string;
  /** False for backups still being written or left behind by a failed/killed BACKUP. */
  complete: boolean;
}

/** True when a process with this pid exists. */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return isErrnoError(err) && err.code === 'EPERM';
  }
}

/**
 * Every backup of a server, oldest first. Directories `<id>.partial` are backups being written
 * (status `in progress` while their writer lives) or left by a crash (status `failed`); they are
 * never valid for restore.
 */
export async function listBackups(config: BartConfig, server: ServerConfig): Promise<CatalogEntry[]> {
  const root = serverCatalogDir(config, server);
  let names: string[];
  try {
    names = await readdir(root);
  } catch (err) {
    if (isErrnoError(err) && err.code === 'ENOENT') return [];
    throw err;
  }
  const out: CatalogEntry[] = [];
  for (const name of names) {
    const partial = name.endsWith(PARTIAL_SUFFIX);
    const id = partial ? name.slice(0, -PARTIAL_SUFFIX.length) : name;
    if (!/^\d+$/.test(id)) continue;
    const dir = join(root, name);
    let info: BackupInfo;
    try {
      info = await readBackupInfo(dir);
    } catch (err) {
      if (!partial) log.warning(`backup ${id} of server ${server.name}: unreadable backupinfo (${(err as Error).message}); skipped`);
      continue;
    }
    if (partial) {
      const alive = info.pid !== undefined && processAlive(info.pid);
      info = { ...info, status: alive ? 'in progress' : 'failed' };
    }
    out.push({ info, dir, complete: !partial });
  }
  out.sort((a, b) => (BigInt(a.info.id) < BigInt(b.info.id) ? -1 : BigInt(a.info.id) > BigInt(b.info.id) ? 1 : 0));
  return out;
}

/** Finds a complete backup by identifier or name; a clear error when there is none. */
export function findBackup(entries: CatalogEntry[], server: ServerConfig, idOrName: string): CatalogEntry {
  const complete = entries.filter((e) => e.complete);
  const hit = complete.find((e) => e.info.id === idOrName) ?? complete.find((e) => e.info.name === idOrName);
  if (hit) return hit;
  const partial = entries.find((e) => !e.complete && (e.info.id === idOrName || e.info.name === idOrName));
  if (partial) throw new BartError(`backup "${idOrName}" of server ${server.name} is ${partial.info.status}, not a complete backup`);
  throw new BartError(`backup "${idOrName}" not found for server ${server.name} (see bart SHOW-BACKUPS -s ${server.name})`);
}

/** The newest complete backup that may be restored (active or keep), if any. */
export function latestBackup(entries: CatalogEntry[]): CatalogEntry | undefined {
  const usable = entries.filter((e) => e.complete && (e.info.status === 'active' || e.info.status === 'keep'));
  return usable[usable.length - 1];
}
