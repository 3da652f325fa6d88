// Catalog: the backups of a server, listed oldest first, complete or partial, and found by id or name.

import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { BartError, errorMessage, isErrnoError } from '../util/errors.js';
import { log } from '../util/log.js';
import { pathExists } from '../util/path-exists.js';
import { BackupInfoError, damagedBackupInfo, readBackupInfo, type BackupInfo } from './backup-info.js';
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
  if (await pathExists(plain)) return plain;
  const gz = plain + GZIP_SUFFIX;
  if (await pathExists(gz)) return gz;
  return undefined;
}

/** A backup found in the catalog. */
export interface CatalogEntry {
  info: BackupInfo;
  /** Its directory (`<id>` or `<id>.partial`). */
  dir: string;
  /**
   * False for backups still being written or left behind by a failed/killed BACKUP, and for
   * damaged ones: no command takes them for a backup.
   */
  complete: boolean;
  /**
   * Set when the backupinfo is missing or fails its checks (status `damaged`): what is wrong. The
   * backup is listed so that it can be seen and deleted; it is never restored, verified or kept.
   */
  damage?: string;
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
 * never valid for restore. A complete directory whose backupinfo is missing or damaged is listed
 * with status `damaged` and the reason ({@link CatalogEntry.damage}), never as a usable backup and
 * never as an error for the whole listing.
 */
export async function listBackups(config: BartConfig, server: ServerConfig): Promise<CatalogEntry[]> {
  const root = serverCatalogDir(config, server);
  const names = await archiveNames(root);
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
      // A .partial without a readable backupinfo is a dead BACKUP's leftover (MANAGE -l lists it).
      if (partial) continue;
      const reason = err instanceof BackupInfoError ? err.reason : errorMessage(err);
      log.debug(`backup ${id} of server ${server.name}: damaged backupinfo: ${errorMessage(err)}`);
      out.push({ info: damagedBackupInfo(id, dir), dir, complete: false, damage: reason });
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

/** Options of {@link findBackup}. */
export interface FindBackupOptions {
  /** Also return a damaged backup (DELETE removes it); every other command refuses it. */
  damaged?: boolean;
}

/**
 * Finds a complete backup by identifier or name; a clear error when there is none, when the name
 * is given to more than one backup (damage: BACKUP keeps names unique), or when the backup is
 * damaged (its reason and the commands that repair or remove it).
 */
export function findBackup(
  entries: CatalogEntry[],
  server: ServerConfig,
  idOrName: string,
  options: FindBackupOptions = {},
): CatalogEntry {
  const byId = entries.find((e) => e.info.id === idOrName);
  if (byId?.damage !== undefined) {
    if (options.damaged) return byId;
    throw new BartError(
      `backup ${byId.info.id} of server ${server.name} is damaged (${byId.damage}); it cannot be used: ` +
        `bart INIT -r -s ${server.name} -i ${byId.info.id} may rebuild its backupinfo from the manifest, ` +
        `bart DELETE -s ${server.name} -i ${byId.info.id} deletes it`,
    );
  }
  const complete = entries.filter((e) => e.complete);
  const named = complete.filter((e) => e.info.name === idOrName);
  const hit = complete.find((e) => e.info.id === idOrName) ?? named[0];
  if (hit && hit.info.id !== idOrName && named.length > 1) {
    const ids = named.map((e) => e.info.id).join(', ');
    const where = `backups ${ids} of server ${server.name}`;
    throw new BartError(`backup name "${idOrName}" is given to ${where}; use the identifier`);
  }
  if (hit) return hit;
  const partial = entries.find((e) => !e.complete && (e.info.id === idOrName || e.info.name === idOrName));
  if (partial)
    throw new BartError(
      `backup "${idOrName}" of server ${server.name} is ${partial.info.status}, not a complete backup`,
    );
  throw new BartError(
    `backup "${idOrName}" not found for server ${server.name} (see bart SHOW-BACKUPS -s ${server.name})`,
  );
}

/** The newest complete backup that may be restored (active or keep), if any. */
export function latestBackup(entries: CatalogEntry[]): CatalogEntry | undefined {
  const usable = entries.filter((e) => e.complete && (e.info.status === 'active' || e.info.status === 'keep'));
  return usable[usable.length - 1];
}
