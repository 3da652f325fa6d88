// Catalog: the backups of a server, listed oldest first, complete or partial, and found by id or name.

import type { BartConfig, ServerConfig } from '../config/types.js';
import { openRepository } from '../storage/open-repository.js';
import { joinKey, type RepositoryStorage } from '../storage/storage.js';
import { BartError, errorMessage, isErrnoError } from '../util/errors.js';
import { log } from '../util/log.js';
import { forEachLimited } from '../util/for-each-limited.js';
import { BackupInfoError, damagedBackupInfo, readBackupInfo, type BackupInfo } from './backup-info.js';
import { BACKUPINFO_FILE, DELETING_SUFFIX, GZIP_SUFFIX, PARTIAL_SUFFIX } from './layout.js';

/**
 * Names of the objects directly below `prefix` of a storage (a server's catalog or WAL archive
 * root is `''`), and of its sub-prefixes with `withPrefixes`; none when it does not exist yet.
 */
export async function archiveNames(storage: RepositoryStorage, prefix = '', withPrefixes = false): Promise<string[]> {
  const names: string[] = [];
  for await (const page of storage.list(prefix, { shallow: true })) {
    for (const o of page.objects) names.push(o.key.slice(prefix === '' ? 0 : prefix.length + 1));
    if (withPrefixes) names.push(...page.prefixes);
  }
  return names;
}

/** The key of the archived copy of WAL file `name` in a WAL archive, plain or gzip-compressed; undefined when absent. */
export async function findArchived(archive: RepositoryStorage, name: string): Promise<string | undefined> {
  if ((await archive.stat(name)) !== undefined) return name;
  const gz = name + GZIP_SUFFIX;
  if ((await archive.stat(gz)) !== undefined) return gz;
  return undefined;
}

/** A backup found in the catalog. */
export interface CatalogEntry {
  info: BackupInfo;
  /** The repository storage of the backup's server. */
  storage: RepositoryStorage;
  /** The prefix of its backupinfo: `<id>`, or `<id>.partial` for a backup being written or left by a crash. */
  key: string;
  /**
   * The prefix of its files: {@link key}, except for a partial backup on a storage without atomic
   * renames (S3), which writes its files under `<id>` and only its backupinfo under `<id>.partial`
   * until it is complete (see backup/transaction.ts).
   */
  dataKey: string;
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

/**
 * True when backup `id` has a tombstone on a storage without atomic renames: a DELETE or MANAGE -d
 * wrote `<id>.deleting/marker` before removing anything of it, so from that instant on neither `<id>`
 * nor a `<id>.partial` beside it is a backup (its WAL may already be gone). `names` are the names at
 * the catalog root ({@link archiveNames} with prefixes). On POSIX a backup being deleted is a renamed
 * directory, `<id>` no longer exists, and this is false.
 */
export function beingDeleted(storage: RepositoryStorage, names: ReadonlySet<string>, id: string): boolean {
  return storage.renamePrefix === undefined && names.has(id + DELETING_SUFFIX);
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

/** Backupinfos {@link listBackups} reads at once. */
const BACKUPINFO_READS_IN_FLIGHT = 16;

/**
 * Every backup of a server, oldest first. Entries `<id>.partial` are backups being written (status
 * `in progress` while their writer lives) or left by a crash (status `failed`); they are never valid
 * for restore. A complete backup whose backupinfo is missing or damaged is listed with status
 * `damaged` and the reason ({@link CatalogEntry.damage}), never as a usable backup and never as an
 * error for the whole listing. On a storage without atomic renames, `<id>` holding files but no
 * backupinfo next to a live `<id>.partial` is that partial backup's data, not a damaged backup, and
 * an identifier with a tombstone (`<id>.deleting/marker`, see {@link beingDeleted}) is no backup at
 * all, in whatever state the interrupted deletion left it: MANAGE -l lists it as a leftover.
 */
export async function listBackups(
  config: BartConfig,
  server: ServerConfig,
  storage: RepositoryStorage = openRepository(config, server),
): Promise<CatalogEntry[]> {
  const names = new Set(await archiveNames(storage, '', true));
  const out: CatalogEntry[] = [];
  const renames = storage.renamePrefix !== undefined;
  // Several backupinfos read at once: on an object store each is a request of its own (tens of ms), and a catalog
  // of a hundred backups read one by one kept every command waiting seconds. Sorted below, so order does not matter.
  await forEachLimited([...names], BACKUPINFO_READS_IN_FLIGHT, async (name) => {
    const partial = name.endsWith(PARTIAL_SUFFIX);
    const id = partial ? name.slice(0, -PARTIAL_SUFFIX.length) : name;
    if (!/^\d+$/.test(id)) return;
    if (beingDeleted(storage, names, id)) return;
    const dataKey = partial && !renames ? id : name;
    let info: BackupInfo;
    try {
      info = await readBackupInfo(storage, name);
    } catch (err) {
      // A .partial without a readable backupinfo is a dead BACKUP's leftover (MANAGE -l lists it).
      if (partial) return;
      // The files of a backup being written (or left by a crash) on a storage that cannot rename.
      if (
        !renames &&
        names.has(id + PARTIAL_SUFFIX) &&
        (await storage.stat(joinKey(name, BACKUPINFO_FILE))) === undefined
      )
        return;
      const reason = err instanceof BackupInfoError ? err.reason : errorMessage(err);
      log.debug(`backup ${id} of server ${server.name}: damaged backupinfo: ${errorMessage(err)}`);
      const where = joinKey(storage.location, name);
      out.push({ info: damagedBackupInfo(id, where), storage, key: name, dataKey, complete: false, damage: reason });
      return;
    }
    if (partial) {
      // A complete backup of the same id wins over a stale marker (crash between publishing and cleaning up).
      if (!renames && names.has(id) && (await storage.stat(joinKey(id, BACKUPINFO_FILE))) !== undefined) return;
      const alive = info.pid !== undefined && processAlive(info.pid);
      info = { ...info, status: alive ? 'in progress' : 'failed' };
    }
    out.push({ info, storage, key: name, dataKey, complete: !partial });
  });
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
