// Restore: the one entry point, running the restore phases in order and rolling back when one fails.

import { existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { BackupInfo, ChecksumAlgorithm } from '../catalog/backup-info.js';
import type { CatalogEntry } from '../catalog/catalog.js';
import { serverCatalogDir } from '../catalog/layout.js';
import { registerRestore } from '../catalog/lock.js';
import type { BartConfig, ServerConfig } from '../config/types.js';
import type { RestoreTarget } from '../hosts/restore-target.js';
import { openWalArchive } from '../storage/open-repository.js';
import type { RepositoryStorage } from '../storage/storage.js';
import { PATCH_BATCH_BYTES } from '../hosts/ssh/restore-target.js';
import { signalFileName } from '../postgres/recovery-config.js';
import { BartError, errorMessage } from '../util/errors.js';
import { formatBytes, formatDuration } from '../util/format.js';
import { phaseTimes } from '../util/phase-times.js';
import { log } from '../util/log.js';
import { currentUserName, isRoot } from '../util/os-user.js';
import { shellQuote } from '../util/shell-quote.js';
import { startRestoreWorkers, type ExtractResult, type RestoreWorkers } from './engine.js';
import { copyArchivedWal, COPIED_WAL_DIR, fixOwnership, writeBackupFiles } from './files.js';
import { BASE_ARCHIVE, type BackupScan } from './plan.js';
import { removeSignalFiles, writeRecoveryConfig } from './recovery-config-writer.js';
import type { ParsedTarget, TargetOptions } from './recovery-target.js';
import { INCOMPLETE_MARKER, PG_VERSION_PENDING, restoreFailure, RestoreTransaction } from './rollback.js';
import {
  checkDeltaTablespace,
  checkDeltaTarget,
  markerSystemIdLine,
  planDelta,
  removeStale,
  type DeltaPlan,
} from './delta.js';
import { checkChainStillListed, selectBackup } from './select.js';
import { linkTablespaces, restoreRoots, tablespaceDestinations, type RestoreRoot } from './tablespaces.js';
import {
  checkFreeSpace,
  checkRoot,
  checkWritable,
  scanChain,
  validateRecoveryTarget,
  warnArchiveGetUser,
} from './validate.js';
import { selectWalToCopy, walCopyBytes, type WalToCopy } from './wal.js';

/** A restore as `bart RESTORE` resolved it from its options and the server's settings. */
export interface RestoreRequest {
  server: ServerConfig;
  /** -p: the absolute path of the data directory to restore into (empty or absent). */
  path: string;
  /** -i: the backup (id or name); without it, chosen from the recovery target. */
  backupId?: string;
  /** --tablespace-map, parsed: OID → location. */
  tablespaceMap?: Map<number, string>;
  /** The recovery target options (-t, -x, -g, --target-*). */
  targetOptions: TargetOptions;
  /** Worker threads (-w, else the server's setting). */
  workers: number;
  /** -c or copy_wals_during_restore: copy the WAL recovery needs into the restored cluster. */
  copyWals: boolean;
  /** --disable-checksum. */
  disableChecksum: boolean;
  /** --standby: standby.signal instead of recovery.signal. */
  standby: boolean;
  /** --delta: rewrite only what differs in an existing data directory of the same cluster. */
  delta: boolean;
}

/** Settings derived from the request, the server and the backup. */
interface Plan {
  config: BartConfig;
  server: ServerConfig;
  info: BackupInfo;
  /** The backups to restore, full backup first (just one for a full backup). */
  chain: CatalogEntry[];
  /** The server's WAL archive (history files, WAL for -c). */
  archive: RepositoryStorage;
  path: string;
  target: ParsedTarget;
  scan: BackupScan;
  roots: RestoreRoot[];
  tablespaceDest: Map<number, string>;
  wal: WalToCopy[];
  copyWals: boolean;
  workers: number;
  checksumAlgorithm: ChecksumAlgorithm;
  /** Restoring to another host over ssh (-r). */
  remote: boolean;
  /** Restore root of each archive (`base` → the data directory, OID → the tablespace location). */
  destinations: Map<string, string>;
  /** --delta: what the target already holds. */
  delta?: DeltaPlan;
}

/** Every check, before the first byte is written: select, validate, remap tablespaces, free space. */
async function preparePlan(config: BartConfig, req: RestoreRequest, target: RestoreTarget): Promise<Plan> {
  const remote = target.spec.kind === 'ssh';
  const { server, path } = req;
  const { entry, chain } = await selectBackup(config, server, req.backupId, req.targetOptions);
  const info = entry.info;
  const archive = openWalArchive(config, server);
  const parsed = await validateRecoveryTarget(req.targetOptions, info, archive);
  const { scan, restored } = await scanChain(chain, entry);

  const tablespaceDest = tablespaceDestinations(info, server, req.tablespaceMap);
  const base = restored?.get(BASE_ARCHIVE) ?? scan.archives.get(BASE_ARCHIVE)!;
  const roots = await restoreRoots(target, path, base, info, tablespaceDest, restored ?? scan.archives);
  const destinations = new Map<string, string>([[BASE_ARCHIVE, path]]);
  for (const [oid, dest] of tablespaceDest) destinations.set(String(oid), dest);
  let delta: DeltaPlan | undefined;
  if (req.delta) {
    await checkDeltaTarget(target, roots[0]!, info);
    for (const root of roots.slice(1)) await checkDeltaTablespace(target, root);
    for (const root of roots) await checkWritable(target, root);
    const compareStart = Date.now();
    delta = await planDelta(target, chain, roots, destinations);
    log.debug(`delta restore: compared the target with the backup in ${Date.now() - compareStart} ms`);
  } else {
    for (const root of roots) await checkRoot(target, root);
  }

  const copyWals = req.copyWals;
  const maxTli = parsed.timeline !== undefined && /^\d+$/.test(parsed.timeline) ? Number(parsed.timeline) : undefined;
  const wal = copyWals ? await selectWalToCopy(archive, info, maxTli) : [];
  // The data directory also receives the copied WAL; over ssh, changed blocks wait in scratch files
  // (up to a batch) before they are patched in.
  const inDataDir = walCopyBytes(wal, info.walSegmentSize) + (remote && chain.length > 1 ? PATCH_BATCH_BYTES : 0);
  // A delta restore needs room only for what its files grow by (they are rewritten in place).
  const content = (r: RestoreRoot) => (delta ? Math.max(0, delta.growth.get(r.path) ?? 0) : r.bytes + r.files * 2048);
  await checkFreeSpace(
    target,
    roots.map((r, i) => ({ path: r.path, bytes: content(r) + (i === 0 ? inDataDir : 0) })),
  );

  warnArchiveGetUser(config, server, remote, copyWals);
  const checksumAlgorithm: ChecksumAlgorithm = req.disableChecksum ? 'NONE' : info.checksumAlgorithm;
  const workers = req.workers;
  return {
    config,
    server,
    info,
    chain,
    archive,
    path,
    target: parsed,
    scan,
    roots,
    tablespaceDest,
    wal,
    copyWals,
    workers,
    checksumAlgorithm,
    remote,
    destinations,
    ...(delta ? { delta } : {}),
  };
}

/**
 * Restores a full backup, or an incremental one through its chain, into an empty or absent directory
 * (with `delta`: over an existing data directory of the same cluster, rewriting only what differs)
 * on `target` (this host, or another one over ssh), with tablespaces, recovery settings for
 * point-in-time recovery, and checksums verified as data streams. Everything that can be checked is
 * checked before the first byte is written; a failure later removes what was written, leaving the
 * restore path (and tablespace locations) as they were. Returns the exit code.
 */
export async function runRestore(config: BartConfig, req: RestoreRequest, target: RestoreTarget): Promise<number> {
  const checkStart = Date.now();
  // The worker threads boot while the catalog is read and checked; closed here whatever happens (a second close,
  // after the extraction closed them, does nothing).
  const workers = startRestoreWorkers(req.workers);
  try {
    return await restoreWith(workers, config, req, target, checkStart);
  } finally {
    await workers.close();
  }
}

async function restoreWith(
  workers: RestoreWorkers,
  config: BartConfig,
  req: RestoreRequest,
  target: RestoreTarget,
  checkStart: number,
): Promise<number> {
  const plan = await phaseTimes.wait('checks and plan', preparePlan(config, req, target));
  // A reader, not the exclusive server lock: BACKUP and other RESTOREs go on, DELETE and MANAGE -d refuse.
  const serverDir = serverCatalogDir(config, plan.server);
  const where = target.spec.kind === 'ssh' ? `${target.spec.user}@${target.spec.host}:${plan.path}` : plan.path;
  const reader = await registerRestore(serverDir, { backups: plan.chain.map((e) => e.info.id), path: where });
  try {
    await checkChainStillListed(config, plan.server, plan.chain);
    log.debug(`checks took ${Date.now() - checkStart} ms`);
    return await restorePlan(plan, req, target, workers);
  } finally {
    await reader.release();
    await plan.archive.close();
  }
}

/** Writes everything after the files: links, WAL, recovery settings. Returns the settings written. */
async function finishDataDirectory(
  plan: Plan,
  req: RestoreRequest,
  target: RestoreTarget,
): Promise<[string, string][]> {
  await linkTablespaces(target, plan.path, plan.info, plan.tablespaceDest);
  await removeSignalFiles(target, plan.path);
  if (plan.copyWals) {
    const dir = join(plan.path, COPIED_WAL_DIR);
    await phaseTimes.wait(
      'WAL copy',
      copyArchivedWal(target, dir, plan.archive, plan.wal, plan.info.walSegmentSize, plan.workers),
    );
  }
  const { config, server, info, path, copyWals } = plan;
  // scp can fetch from the archive only when it is a directory of plain files here (not a bucket, not encrypted).
  const archiveIsDirectory = plan.archive.localPath('') !== undefined;
  const recovery = {
    config,
    server,
    info,
    path,
    target: plan.target,
    copyWals,
    standby: req.standby,
    archiveIsDirectory,
  };
  return writeRecoveryConfig(recovery, target);
}

async function restorePlan(
  plan: Plan,
  req: RestoreRequest,
  target: RestoreTarget,
  pool: RestoreWorkers,
): Promise<number> {
  const { info, path } = plan;
  log.info(
    `restoring backup ${info.id}${info.name ? ` (${info.name})` : ''} of server ${plan.server.name}: ` +
      `${info.format} format, compression ${info.compression}, ${plan.scan.totalFiles} files, ` +
      formatBytes(plan.scan.totalBytes),
  );
  const timeline = plan.target.timeline ? `, timeline ${plan.target.timeline}` : '';
  log.info(`restore path: ${path}; recovery target: ${plan.target.description}${timeline}`);
  const dbHost = plan.server.remoteHost;
  if (!plan.remote && dbHost) {
    // BART restored to remote_host when -r was left out; pgbart restores where it is told (-r), so say where this goes.
    log.info(
      `restoring on this host (the BART host); to restore on the database host, add -r ${dbHost.user}@${dbHost.host}`,
    );
  }

  const controller = new AbortController();
  const onSignal = () => controller.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const txn = new RestoreTransaction(target);
  const started = Date.now();
  let settings: [string, string][];
  let extracted: ExtractResult & { written: number };
  let removed = 0;
  try {
    for (const root of plan.roots) await txn.claim(root);
    // The marker names the cluster: a RESTORE --delta run after a crash trusts it when pg_control is half written.
    const marker =
      `pgbart RESTORE of backup ${info.id} in progress (pid ${process.pid}, started ${new Date().toISOString()})\n` +
      markerSystemIdLine(info);
    await target.writeFile(join(path, INCOMPLETE_MARKER), marker, 0o600);
    if (plan.delta) {
      removed = await startDelta(plan, plan.delta, target);
      log.debug(`delta restore: stale entries removed after ${Date.now() - started} ms`);
    }
    const { chain, scan, checksumAlgorithm, workers, destinations, delta } = plan;
    const files = { chain, scan, destinations, checksumAlgorithm, workers, pool, ...(delta ? { delta } : {}) };
    extracted = await phaseTimes.wait('files', writeBackupFiles(files, target, controller.signal));
    log.debug(`files written after ${Date.now() - started} ms`);
    settings = await finishDataDirectory(plan, req, target);
    await phaseTimes.wait('ownership', fixOwnership(plan.server, plan.roots, target));
    controller.signal.throwIfAborted();
    log.debug(`recovery settings written after ${Date.now() - started} ms`);
    for (const root of plan.roots) await phaseTimes.wait('fsync', target.syncTree(root.path));
    log.debug(`synced to disk after ${Date.now() - started} ms`);
    // Only now, with everything durable, does the directory become a startable cluster.
    await target.rename(join(path, PG_VERSION_PENDING), join(path, 'PG_VERSION'));
    await target.remove(join(path, INCOMPLETE_MARKER));
    await target.syncDir(path);
  } catch (err) {
    // A delta restore cannot give back what it overwrote: it leaves a directory that will not start,
    // which the next RESTORE --delta completes.
    if (plan.delta) throw deltaFailure(err, controller.signal.aborted, target, path);
    const clean = await txn.rollback();
    throw restoreFailure(err, controller.signal.aborted, clean, target, path, plan.roots);
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  }
  reportRestored(plan, req, target, extracted, (Date.now() - started) / 1000, settings, removed);
  return 0;
}

/**
 * The first writes of a delta restore: PG_VERSION moves aside (made durable before anything else
 * changes, so the directory cannot start until the restore is complete), kept files get the backup's
 * permission bits, and what the backup does not have is removed. Returns the entries removed.
 */
async function startDelta(plan: Plan, delta: DeltaPlan, target: RestoreTarget): Promise<number> {
  const path = plan.path;
  if ((await target.readFile(join(path, 'PG_VERSION'))) !== undefined) {
    await target.rename(join(path, 'PG_VERSION'), join(path, PG_VERSION_PENDING));
  }
  await target.syncDir(path);
  for (const [file, mode] of delta.modes) await target.chmod(file, mode);
  const removed = await removeStale(target, plan.destinations, delta);
  log.debug(`delta restore: removed ${removed} files and directories the backup does not have`);
  return removed;
}

/** The error a failed delta restore ends with: why, and that the next RESTORE --delta completes it. */
function deltaFailure(err: unknown, interrupted: boolean, target: RestoreTarget, path: string): BartError {
  const why = interrupted ? 'RESTORE --delta was interrupted' : errorMessage(err);
  const where = target.spec.kind === 'local' ? '' : ` on ${target.description}`;
  return new BartError(
    `${why}; "${path}"${where} holds a partly rewritten cluster that will not start ` +
      `(${INCOMPLETE_MARKER}, no PG_VERSION): run RESTORE --delta again to complete it`,
    interrupted ? 130 : 1,
  );
}

/** pg_ctl of the backup's major version where the usual packages put it, else plain `pg_ctl`. */
function pgCtlFor(major: number): string {
  const dirs = [
    `/usr/lib/postgresql/${major}/bin`,
    `/usr/pgsql-${major}/bin`,
    `/usr/edb/as${major}/bin`,
    `/usr/local/pgsql-${major}/bin`,
  ];
  for (const dir of dirs) {
    if (existsSync(join(dir, 'pg_ctl'))) return join(dir, 'pg_ctl');
  }
  return 'pg_ctl';
}

/** What was restored, the recovery settings, and how to start the restored server. */
function reportRestored(
  plan: Plan,
  req: RestoreRequest,
  target: RestoreTarget,
  extracted: ExtractResult & { written: number },
  seconds: number,
  settings: [string, string][],
  removed: number,
): void {
  const { info, path } = plan;
  const rate = seconds > 0 ? ` (${formatBytes(extracted.bytes / seconds)}/s)` : '';
  const verified =
    plan.checksumAlgorithm === 'NONE'
      ? req.disableChecksum
        ? 'checksums not verified (--disable-checksum)'
        : 'the backup has no file checksums'
      : `${plan.checksumAlgorithm} checksums verified`;
  log.debug(`RESTORE phases: ${phaseTimes.summary()}`);
  log.fileOnly('INFO', `RESTORE: peak RSS ${Math.round(process.resourceUsage().maxRSS / 1024)} MB`);
  if (plan.delta) {
    const d = plan.delta;
    const total = extracted.written + d.keptBytes;
    const share = total > 0 ? ` (${((100 * d.keptBytes) / total).toFixed(1)}% kept)` : '';
    for (const note of d.notes) log.info(`--delta: ${note}`);
    log.debug(`delta restore: ${extracted.written} bytes written, ${d.keptBytes} bytes kept in ${d.keptFiles} files`);
    log.info(
      `delta restore: wrote ${formatBytes(extracted.written)}, kept ${formatBytes(d.keptBytes)} in ${d.keptFiles} ` +
        `files already in place${share}, removed ${removed} files and directories, ` +
        `in ${formatDuration(seconds * 1000)} with ${plan.workers} worker(s); ${verified}`,
    );
  } else {
    const took = formatDuration(seconds * 1000);
    log.info(
      `restored ${extracted.files} files, ${formatBytes(extracted.bytes)} in ${took}${rate} ` +
        `with ${plan.workers} worker(s); ${verified}`,
    );
  }
  for (const t of info.tablespaces) {
    const dest = plan.tablespaceDest.get(t.oid);
    log.info(`tablespace ${t.name} (OID ${t.oid}) restored to ${dest} (pg_tblspc/${t.oid} links there)`);
  }
  if (plan.copyWals) log.info(`copied ${plan.wal.length} archived WAL files to ${join(path, COPIED_WAL_DIR)}`);
  log.info(`${signalFileName({ standby: req.standby })} created; recovery settings added to postgresql.auto.conf:`);
  for (const [k, v] of settings) if (v !== '' && k !== 'archive_mode') log.info(`  ${k} = ${v}`);
  log.info(
    'archive_mode is turned off in the restored cluster (postgresql.auto.conf), so it does not archive into ' +
      'the catalog of the server it was copied from; turn it back on when it becomes a primary that must be backed up',
  );
  if (plan.target.target.kind !== 'none' && !req.standby) {
    const action = plan.target.action ?? 'pause';
    if (action === 'pause') {
      log.info(
        "recovery pauses at the target (PostgreSQL's default): check the data, then end recovery with " +
          'SELECT pg_wal_replay_resume(); or restore again with another target',
      );
    } else {
      const what =
        action === 'promote' ? 'end and the server accept writes (promote)' : 'shut the server down (shutdown)';
      log.info(`at the target, recovery will ${what}`);
    }
  }
  const localNames = new Set(['localhost', '127.0.0.1', '::1', hostname()]);
  if (!plan.remote && localNames.has(plan.server.host)) {
    log.info(
      `the source server runs on this host (port ${plan.server.port}): ` +
        `set another port in ${join(path, 'postgresql.conf')} before starting the restored one`,
    );
  }
  if (target.spec.kind === 'ssh') {
    const { user, host } = target.spec;
    const command = `pg_ctl -D ${shellQuote(path)} start`;
    log.info(`restore complete; on ${host}, start the restored server as ${user} with: ${command}`);
    return;
  }
  const owner = plan.server.clusterOwner;
  const command = `${pgCtlFor(Math.floor(info.serverVersionNum / 10000))} -D ${shellQuote(path)} start`;
  const as = currentUserName() !== owner || isRoot() ? ` as ${owner}` : '';
  log.info(`restore complete; start the restored server${as} with: ${command}`);
}
