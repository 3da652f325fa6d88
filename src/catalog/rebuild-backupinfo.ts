// Backup info rebuild: INIT -r, backupinfo files rebuilt from each backup's verified manifest.

import type { BartConfig, ServerConfig } from '../config/types.js';
import { openRepository } from '../storage/open-repository.js';
import { StorageNotFoundError, joinKey, type RepositoryStorage } from '../storage/storage.js';
import { BartError, errorMessage } from '../util/errors.js';
import { archiveNames, beingDeleted } from './catalog.js';
import {
  readBackupInfo,
  renderBackupInfo,
  writeBackupInfo,
  type BackupInfo,
  type BackupStatus,
} from './backup-info.js';
import { BACKUPINFO_FILE, MANIFEST_FILE, PARTIAL_SUFFIX } from './layout.js';
import { readManifestInfo } from './manifest.js';

/** What INIT -r did (or found) for one backup directory. */
export interface RebuildOutcome {
  id: string;
  name?: string;
  /** `rebuilt`: backupinfo was missing, damaged or different and has been rewritten. */
  result: 'rebuilt' | 'unchanged' | 'failed';
  message: string;
}

/** Fields backupinfo cannot do without (name and parent are optional). */
const REQUIRED_FIELDS = [
  'id',
  'sizeBytes',
  'dataBytes',
  'format',
  'compression',
  'compressionLevel',
  'timezone',
  'xlogMethod',
  'checksumAlgorithm',
  'artifactChecksums',
  'tablespaces',
  'timeline',
  'startWalFile',
  'stopWalFile',
  'startLsn',
  'stopLsn',
  'checkpointLsn',
  'walFiles',
  'walBytes',
  'serverVersionNum',
  'systemIdentifier',
  'walSegmentSize',
  'engine',
  'threadCount',
  'startTime',
  'stopTime',
] as const;

const KEPT_STATUSES: ReadonlySet<BackupStatus> = new Set(['active', 'obsolete', 'keep']);

/**
 * The backupinfo a backup directory should have, from the details its manifest recorded (verified
 * by the manifest's own hash): every field, the name included (BART's INIT -r lost names). The
 * status is the one the current backupinfo holds when it is readable (keep/obsolete survive a
 * rebuild), else `active` (the next MANAGE applies the retention policy again). The location is
 * where the directory is now.
 */
export async function backupInfoFromManifest(storage: RepositoryStorage, id: string): Promise<BackupInfo> {
  let recorded: Record<string, unknown> | undefined;
  const manifestKey = joinKey(id, MANIFEST_FILE);
  const manifestPath = joinKey(storage.location, manifestKey);
  try {
    recorded = await readManifestInfo(storage, manifestKey);
  } catch (err) {
    throw new BartError(
      `cannot rebuild the backupinfo of backup ${id}: ${err instanceof StorageNotFoundError ? `${manifestPath} is missing` : errorMessage(err)}`,
    );
  }
  if (!recorded)
    throw new BartError(
      `cannot rebuild the backupinfo of backup ${id}: ${manifestPath} records no backup details (written by an older pgbart)`,
    );
  if (recorded.id !== id)
    throw new BartError(
      `cannot rebuild the backupinfo of backup ${id}: its manifest describes backup ${String(recorded.id)}`,
    );
  let status: BackupStatus = 'active';
  try {
    const current = await readBackupInfo(storage, id);
    if (KEPT_STATUSES.has(current.status)) status = current.status;
  } catch {
    /* missing or damaged: that is why we are here */
  }
  const info = {
    ...(recorded as unknown as Omit<BackupInfo, 'status' | 'startTime' | 'stopTime'>),
    status,
    location: joinKey(storage.location, id),
    startTime: new Date(String(recorded.startTime)),
    stopTime: new Date(String(recorded.stopTime)),
  } as BackupInfo;
  delete info.pid;
  const missing = REQUIRED_FIELDS.filter((k) => recorded[k] === undefined || recorded[k] === null);
  if (missing.length > 0 || Number.isNaN(info.startTime.getTime()) || Number.isNaN(info.stopTime.getTime())) {
    throw new BartError(
      `cannot rebuild the backupinfo of backup ${id}: its manifest's backup details lack ${missing.join(', ') || 'valid start/stop times'}`,
    );
  }
  return info;
}

/**
 * `INIT -r`: rebuilds the backupinfo of each complete backup directory of a server (all of them,
 * or those whose identifier or name is in `select`) from its manifest, writing it atomically only
 * when it differs. The caller holds the server lock.
 */
export async function rebuildBackupInfos(
  config: BartConfig,
  server: ServerConfig,
  select: string | undefined,
  dryRun = false,
): Promise<RebuildOutcome[]> {
  const storage = openRepository(config, server);
  const root = storage.location;
  const names = await archiveNames(storage, '', true);
  if (names.length === 0 && storage.kind === 'posix' && storage.localPath('') !== undefined) {
    const { existsSync } = await import('node:fs');
    if (!existsSync(storage.localPath('')!))
      throw new BartError(`the catalog directory ${root} of server ${server.name} does not exist`);
  }
  const nameSet = new Set(names);
  const ids: string[] = [];
  for (const n of names) {
    if (!/^\d+$/.test(n)) continue;
    // Without atomic renames (S3), `<id>` is not a backup to rebuild while its deletion's tombstone is
    // there (its WAL may be gone), nor while it is the data of an unpublished `<id>.partial`.
    if (beingDeleted(storage, nameSet, n)) continue;
    if (
      storage.renamePrefix === undefined &&
      nameSet.has(n + PARTIAL_SUFFIX) &&
      (await storage.stat(joinKey(n, BACKUPINFO_FILE))) === undefined
    )
      continue;
    ids.push(n);
  }
  ids.sort((a, b) => (BigInt(a) < BigInt(b) ? -1 : 1));
  const all = select === undefined || select.toLowerCase() === 'all';
  const out: RebuildOutcome[] = [];
  for (const id of ids) {
    let info: BackupInfo;
    try {
      info = await backupInfoFromManifest(storage, id);
    } catch (err) {
      if (all || select === id) out.push({ id, result: 'failed', message: errorMessage(err) });
      continue;
    }
    if (!all && select !== id && select !== info.name) continue;
    let current: string | undefined;
    try {
      current = renderBackupInfo(await readBackupInfo(storage, id));
    } catch {
      current = undefined;
    }
    const wanted = renderBackupInfo(info);
    const named = info.name ? { name: info.name } : {};
    if (current === wanted) {
      out.push({ id, ...named, result: 'unchanged', message: 'backupinfo matches the manifest' });
      continue;
    }
    if (!dryRun) await writeBackupInfo(storage, id, info);
    out.push({
      id,
      ...named,
      result: 'rebuilt',
      message: `${current === undefined ? 'missing or unreadable' : 'different'} backupinfo ${dryRun ? 'would be ' : ''}rebuilt from the manifest (status ${info.status})`,
    });
  }
  if (!all && out.length === 0)
    throw new BartError(
      `backup "${select}" not found for server ${server.name} (no backup directory with that identifier or name in ${root})`,
    );
  return out;
}
