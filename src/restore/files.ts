// Restore phase: writing the files, the backup through its incremental chain, WAL for -c, ownership.

import type { ChecksumAlgorithm } from '../catalog/backup-info.js';
import type { CatalogEntry } from '../catalog/catalog.js';
import type { ServerConfig } from '../config/types.js';
import type { RestoreTarget } from '../hosts/restore-target.js';
import type { RepositoryStorage } from '../storage/storage.js';
import { BartError } from '../util/errors.js';
import { formatBytes } from '../util/format.js';
import { log } from '../util/log.js';
import { currentUserName, isRoot, lookupOsUser } from '../util/os-user.js';
import { shellQuote } from '../util/shell-quote.js';
import { crashPoint } from '../util/crash-point.js';
import type { DeltaPlan } from './delta.js';
import { extractBackup, type ExtractResult, type RestoreWorkers } from './engine.js';
import { applyIncremental, removeDropped } from './incremental.js';
import { planRestore, type BackupScan } from './plan.js';
import { INCOMPLETE_MARKER, PG_VERSION_PENDING } from './rollback.js';
import type { RestoreRoot } from './tablespaces.js';
import { copyWal, type WalToCopy } from './wal.js';

/** Where -c copies WAL inside the restored data directory (as BART did). */
export const COPIED_WAL_DIR = 'archived_wals';

/** What {@link writeBackupFiles} restores, and how. */
export interface FilesToWrite {
  /** The backups to restore, full backup first. */
  chain: CatalogEntry[];
  /** The full backup's scan. */
  scan: BackupScan;
  /** Restore root of each archive (`base` → the data directory, OID → the tablespace location). */
  destinations: Map<string, string>;
  checksumAlgorithm: ChecksumAlgorithm;
  workers: number;
  /** The worker threads, started earlier (see {@link startRestoreWorkers}); taken over and closed. */
  pool: RestoreWorkers;
  /** RESTORE --delta: what the target already holds (see {@link DeltaPlan}). */
  delta?: DeltaPlan;
}

/**
 * Extracts the full backup with `workers` worker threads, then applies each incremental of the
 * chain in order and removes what the newest one no longer has. PG_VERSION is held back under
 * {@link PG_VERSION_PENDING}, so the directory cannot start before the restore is complete.
 * `bytes` counts the full backup's files written, `written` adds the incrementals' writes.
 */
export async function writeBackupFiles(
  files: FilesToWrite,
  target: RestoreTarget,
  signal: AbortSignal,
): Promise<ExtractResult & { written: number }> {
  const { chain, scan, destinations, checksumAlgorithm, workers, delta } = files;
  const holdBack = { PG_VERSION: PG_VERSION_PENDING };
  // Tasks big enough to amortise their setup, small enough to spread the backup over the workers.
  const taskBytes = Math.min(256 * 1024 * 1024, Math.max(16 * 1024 * 1024, Math.ceil(scan.totalBytes / (workers * 4))));
  const full = chain[0]!;
  const plan = planRestore({
    storage: full.storage,
    dataKey: full.dataKey,
    info: full.info,
    scan,
    destinations,
    checksumAlgorithm,
    taskBytes,
    holdBack,
    ...(delta ? { keep: delta.keep } : {}),
  });
  // Test hook: a delta restore killed between two tasks, some files rewritten and others not yet.
  const afterTask = delta ? () => crashPoint('restore:delta-task') : undefined;
  const extracted = await extractBackup(plan, target, files.pool, full.storage, signal, afterTask);
  let written = extracted.bytes;
  signal.throwIfAborted();
  if (chain.length > 1) {
    const applyOpts = {
      destinations,
      holdBack,
      checksumAlgorithm,
      target,
      keepInBase: [INCOMPLETE_MARKER],
      ...(delta ? { keep: delta.keep, protect: delta.protect } : {}),
    };
    for (const [i, link] of chain.slice(1).entries()) {
      const applied = await applyIncremental(link, applyOpts, { newest: i === chain.length - 2, previous: chain[i]! });
      log.info(`applied incremental backup ${link.info.id}: ${applied.files} files, ${formatBytes(applied.bytes)}`);
      written += applied.written;
      signal.throwIfAborted();
    }
    await removeDropped(chain[chain.length - 1]!, applyOpts);
  }
  return { ...extracted, written };
}

/** -c: copies the WAL recovery needs from the archive into `dir` (uploaded over ssh to a remote target). */
export async function copyArchivedWal(
  target: RestoreTarget,
  dir: string,
  archive: RepositoryStorage,
  wal: WalToCopy[],
  segmentSize: number,
  workers: number,
): Promise<void> {
  await target.makeDir(dir, 0o700);
  await copyWal(archive, wal, segmentSize, target, dir, Math.max(2, workers));
}

/** Makes the restored tree belong to cluster_owner (possible only as root) or says who must. */
export async function fixOwnership(server: ServerConfig, roots: RestoreRoot[], target: RestoreTarget): Promise<void> {
  const owner = server.clusterOwner;
  if (target.spec.kind === 'ssh') {
    // Files written over ssh belong to the ssh user.
    const { user, host } = target.spec;
    if (user !== owner) {
      log.warning(
        `the restored files belong to "${user}" on ${host}, but cluster_owner is "${owner}": ` +
          'PostgreSQL must run as the owner of the files',
      );
    }
    return;
  }
  if (isRoot()) {
    const user = lookupOsUser(owner);
    if (!user) throw new BartError(`cluster_owner "${owner}" of server ${server.name} does not exist on this host`);
    for (const root of roots) await target.chownTree(root.path, user.uid, user.gid);
    return;
  }
  if (currentUserName() !== owner) {
    log.warning(
      `the restored files belong to ${currentUserName()}, but PostgreSQL must run as cluster_owner "${owner}": ` +
        `as root, run chown -R ${owner} ${roots.map((r) => shellQuote(r.path)).join(' ')}`,
    );
  }
}
