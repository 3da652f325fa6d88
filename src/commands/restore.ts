import { existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BackupInfo, ChecksumAlgorithm } from '../catalog/backup-info.js';
import { findBackup, latestBackup, listBackups, type CatalogEntry } from '../catalog/catalog.js';
import { registerRestore } from '../catalog/lock.js';
import { readRestoredState, resolveChain } from '../catalog/chain.js';
import { applyIncremental, removeDropped } from '../restore/incremental.js';
import { serverCatalogDir } from '../catalog/layout.js';
import { extractBackup } from '../restore/engine.js';
import { BASE_ARCHIVE, planRestore, scanBackup, type BackupScan } from '../restore/plan.js';
import { checkTargetAgainstBackup, isKnownTimeZone, parseTargetOptions, type ParsedTarget, type TargetOptions } from '../restore/recovery-target.js';
import { copyWal, selectWalToCopy, walCopyBytes, type WalToCopy } from '../restore/wal.js';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { LocalRestoreTarget } from '../hosts/local/restore-target.js';
import { parseRemoteDestination, PATCH_BATCH_BYTES, scpRestoreCommand, SshRestoreTarget } from '../hosts/ssh/restore-target.js';
import { uploadWalFiles } from '../hosts/ssh/restore-wal.js';
import type { PathState, RestoreTarget } from '../hosts/restore-target.js';
import { mergeAutoConf, recoverySettings, recoverySettingsIn, requireConfSafe, shellQuoteForRestoreCommand, signalFileName } from '../postgres/recovery-config.js';
import { BartError, errorMessage } from '../util/errors.js';
import { formatBytes, formatDuration } from '../util/format.js';
import { log } from '../util/log.js';
import { parseLsn } from '../util/lsn.js';
import { currentUserName, isRoot, lookupOsUser } from '../util/os-user.js';
import { selectOneServer, type CommandContext } from './context.js';

/** Options of `bart RESTORE` (as commander hands them over). */
export interface RestoreOptions extends TargetOptions {
  server?: string;
  restorePath?: string;
  backupid?: string;
  remoteHost?: string;
  workers?: number;
  copyWals?: boolean;
  disableChecksum?: boolean;
  tablespaceMap?: string;
  standby?: boolean;
}

/** Left in PATH while a restore is being written; its presence means "interrupted, do not use". */
export const INCOMPLETE_MARKER = '.pgbart-restore-incomplete';
/** PG_VERSION is written under this name until the end, so a half-restored directory never starts. */
const PG_VERSION_PENDING = 'PG_VERSION.pgbart-incomplete';
/** Where -c copies WAL inside the restored data directory (as BART did). */
const COPIED_WAL_DIR = 'archived_wals';

/** A place a restore writes to: the data directory or a tablespace location. */
interface RestoreRoot {
  path: string;
  what: string;
  state: PathState;
  /** Bytes of content that land there. */
  bytes: number;
  files: number;
}

/** Parses `--tablespace-map OID=PATH;OID=PATH` (same form as tablespace_path in bart.cfg). */
export function parseTablespaceMap(text: string): Map<number, string> {
  const map = new Map<number, string>();
  for (const part of text.split(';').map((p) => p.trim()).filter((p) => p !== '')) {
    const m = /^(\d+)=(\/.*)$/.exec(part);
    if (!m) throw new BartError(`--tablespace-map entry "${part}" is invalid: expected OID=/absolute/path, entries separated by ";"`);
    const oid = Number(m[1]);
    if (map.has(oid)) throw new BartError(`--tablespace-map names OID ${oid} twice`);
    map.set(oid, resolve(m[2]!));
  }
  return map;
}

/** True when `inner` is `outer` or inside it. */
function within(inner: string, outer: string): boolean {
  const rel = relative(outer, inner);
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel));
}

/** The repository's bin/bart.js, for restore_command. */
function bartScript(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, 'bin', 'bart.js');
    if (existsSync(join(dir, 'package.json')) && existsSync(candidate)) return candidate;
    const parent = dirname(dir);
    if (parent === dir) throw new BartError('cannot find bin/bart.js above the pgbart installation, needed for restore_command');
    dir = parent;
  }
}

/** pg_ctl of the backup's major version where the usual packages put it, else plain `pg_ctl`. */
function pgCtlFor(major: number): string {
  for (const dir of [`/usr/lib/postgresql/${major}/bin`, `/usr/pgsql-${major}/bin`, `/usr/edb/as${major}/bin`, `/usr/local/pgsql-${major}/bin`]) {
    if (existsSync(join(dir, 'pg_ctl'))) return join(dir, 'pg_ctl');
  }
  return 'pg_ctl';
}

function shellWord(s: string): string {
  return /^[A-Za-z0-9_./:=@-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

function pickBackup(entries: CatalogEntry[], server: ServerConfig, id: string | undefined): CatalogEntry {
  if (id !== undefined) {
    const hit = findBackup(entries, server, id);
    // An obsolete backup is still whole until MANAGE deletes it; under pressure it may be the one needed.
    if (hit.info.status === 'obsolete') log.warning(`backup ${hit.info.id} is marked obsolete (MANAGE will delete it); restoring it as asked`);
    return hit;
  }
  const latest = latestBackup(entries);
  if (!latest) throw new BartError(`server ${server.name} has no complete active backup to restore (see bart SHOW-BACKUPS -s ${server.name})`);
  return latest;
}

/** The zone a target time without one is read in: the backup's (the BART host's), else ours. */
function zoneOf(info: BackupInfo): string {
  return isKnownTimeZone(info.timezone) ? info.timezone : Intl.DateTimeFormat().resolvedOptions().timeZone;
}

/**
 * Without -i: the newest restorable backup, or, for a time or LSN target, the newest one that ended
 * before the target (what a DBA restoring "to 10:42" means). When none did, the oldest is taken and the
 * target check then names the earliest point any backup can reach.
 */
function pickBackupForTarget(entries: CatalogEntry[], server: ServerConfig, o: TargetOptions): CatalogEntry {
  const newest = pickBackup(entries, server, undefined);
  const usable = entries.filter((e) => e.complete && (e.info.status === 'active' || e.info.status === 'keep'));
  const t = parseTargetOptions(o, zoneOf(newest.info));
  let fits: CatalogEntry[] | undefined;
  if (t.target.kind === 'time' && t.time) fits = usable.filter((e) => e.info.stopTime.getTime() <= t.time!.getTime());
  else if (t.target.kind === 'lsn') fits = usable.filter((e) => parseLsn(e.info.stopLsn) <= parseLsn((t.target as { value: string }).value));
  if (!fits) return newest;
  const pick = fits[fits.length - 1] ?? usable[0]!;
  if (pick !== newest) log.info(`no -i given: using backup ${pick.info.id}, the newest that ended before the recovery target (${t.description})`);
  return pick;
}

async function checkRoot(target: RestoreTarget, root: RestoreRoot): Promise<void> {
  const s = root.state;
  if (s.kind === 'not-directory') throw new BartError(`${root.what} "${root.path}" exists and is not a directory`);
  if (s.kind === 'not-empty') {
    if (s.sample === INCOMPLETE_MARKER) {
      throw new BartError(`${root.what} "${root.path}" holds an interrupted restore (${INCOMPLETE_MARKER}); remove its contents and run RESTORE again`);
    }
    throw new BartError(`${root.what} "${root.path}" is not empty (it holds "${s.sample}"); RESTORE writes only into an empty or absent directory`);
  }
  const dir = s.kind === 'absent' ? s.existingParent : root.path;
  if (!(await target.writable(dir))) throw new BartError(`${root.what} "${root.path}": "${dir}" is not writable by ${target.description === 'local' ? currentUserName() : target.description}`);
}

/** Sums what each file system must hold and refuses when one has less free space. */
async function checkFreeSpace(target: RestoreTarget, needs: { path: string; bytes: number }[]): Promise<void> {
  const perDevice = new Map<string, { at: string; free: number; need: number; paths: string[] }>();
  for (const n of needs) {
    const fs = await target.freeSpace(n.path);
    const d = perDevice.get(fs.device) ?? { at: fs.measuredAt, free: fs.freeBytes, need: 0, paths: [] };
    d.need += n.bytes;
    d.paths.push(n.path);
    perDevice.set(fs.device, d);
  }
  for (const d of perDevice.values()) {
    if (d.need > d.free) {
      throw new BartError(`not enough free space for ${d.paths.join(', ')}: the restore needs ${formatBytes(d.need)}, the file system of "${d.at}" has ${formatBytes(d.free)} free`);
    }
  }
}

/** Remembers what RESTORE created so that a failure leaves every root as it was. */
class RestoreTransaction {
  private readonly undo: (() => Promise<void>)[] = [];

  constructor(private readonly target: RestoreTarget) {}

  /** Creates an absent root (remembering the topmost directory created) or claims an empty one. */
  async claim(root: RestoreRoot): Promise<void> {
    const s = root.state;
    if (s.kind === 'absent') {
      const first = join(s.existingParent, relative(s.existingParent, root.path).split(sep)[0]!);
      this.undo.push(() => this.target.remove(first));
      await this.target.makeDir(root.path, 0o700);
    } else if (s.kind === 'empty') {
      this.undo.push(async () => {
        await this.target.emptyDir(root.path);
        await this.target.chmod(root.path, s.mode);
      });
    }
    await this.target.chmod(root.path, 0o700);
  }

  /** Puts every root back as it was (best effort, reporting what could not be undone); false when something remains. */
  async rollback(): Promise<boolean> {
    let clean = true;
    for (const step of this.undo.reverse()) {
      try {
        await step();
      } catch (err) {
        clean = false;
        log.warning(`could not remove what the failed restore wrote: ${errorMessage(err)}`);
      }
    }
    return clean;
  }
}

/** Settings derived from the options, the server and the backup. */
interface Plan {
  config: BartConfig;
  server: ServerConfig;
  info: BackupInfo;
  backupDir: string;
  /** The backups to restore, full backup first (just one for a full backup). */
  chain: CatalogEntry[];
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
}

async function preparePlan(ctx: CommandContext, o: RestoreOptions, target: RestoreTarget): Promise<Plan> {
  const remote = o.remoteHost !== undefined;
  const server = selectOneServer(ctx.config, o.server, 'RESTORE');
  if (!o.restorePath) throw new BartError('RESTORE needs -p/--restore-path PATH (the directory to restore into; empty or absent)');
  // With -c the path is part of restore_command; refused in any case, before anything is written.
  requireConfSafe('-p/--restore-path', o.restorePath);
  const path = resolve(o.restorePath);
  const cliMap = o.tablespaceMap !== undefined ? parseTablespaceMap(o.tablespaceMap) : undefined;

  const entries = await listBackups(ctx.config, server);
  const entry = o.backupid !== undefined ? pickBackup(entries, server, o.backupid) : pickBackupForTarget(entries, server, o);
  const info = entry.info;
  // An incremental is restored from its chain: the full backup, then each incremental in order.
  const chain = info.parent !== undefined ? resolveChain(entries, entry, server) : [entry];
  const parsed = parseTargetOptions(o, zoneOf(info));
  await checkTargetAgainstBackup(parsed, info, server.archivePath);

  const scan = await scanBackup(chain[0]!.dir, chain[0]!.info);
  for (const link of chain.slice(1)) await scanBackup(link.dir, link.info);
  const restored = chain.length > 1 ? (await readRestoredState(entry.dir)).archives : undefined;

  // Tablespaces: --tablespace-map over tablespace_path over the original location.
  const tablespaceDest = new Map<number, string>();
  const known = new Set(info.tablespaces.map((t) => t.oid));
  for (const [oid] of cliMap ?? []) {
    if (!known.has(oid)) throw new BartError(`--tablespace-map names OID ${oid}, which is not a tablespace of backup ${info.id} (its tablespaces: ${[...known].join(', ') || 'none'})`);
  }
  for (const t of info.tablespaces) tablespaceDest.set(t.oid, cliMap?.get(t.oid) ?? server.tablespacePath.get(t.oid) ?? t.location);

  const roots: RestoreRoot[] = [];
  const base = restored?.get(BASE_ARCHIVE) ?? scan.archives.get(BASE_ARCHIVE)!;
  roots.push({ path, what: 'restore path', state: await target.inspect(path), bytes: base.bytes, files: base.files });
  for (const t of info.tablespaces) {
    const dest = tablespaceDest.get(t.oid)!;
    const sum = (restored ?? scan.archives).get(String(t.oid)) ?? { bytes: 0, files: 0 };
    for (const other of roots) {
      if (within(dest, other.path) || within(other.path, dest)) {
        throw new BartError(`tablespace ${t.name} (OID ${t.oid}) would be restored to "${dest}", which overlaps ${other.what} "${other.path}"; map it elsewhere with --tablespace-map ${t.oid}=/path`);
      }
    }
    roots.push({ path: dest, what: `tablespace ${t.name} (OID ${t.oid}) location`, state: await target.inspect(dest), bytes: sum.bytes, files: sum.files });
  }
  for (const root of roots) await checkRoot(target, root);

  const copyWals = o.copyWals === true || server.copyWalsDuringRestore;
  const maxTli = parsed.timeline !== undefined && /^\d+$/.test(parsed.timeline) ? Number(parsed.timeline) : undefined;
  const wal = copyWals ? await selectWalToCopy(server.archivePath, info, maxTli) : [];
  await checkFreeSpace(target, [
    // Over ssh, changed blocks wait in scratch files (up to a batch) before they are patched in.
    ...roots.map((r, i) => ({ path: r.path, bytes: r.bytes + r.files * 2048 + (i === 0 ? walCopyBytes(wal, info.walSegmentSize) + (remote && chain.length > 1 ? PATCH_BATCH_BYTES : 0) : 0) })),
  ]);

  if (!remote && !copyWals && server.clusterOwner !== ctx.config.global.bartHost.user) {
    log.warning(
      `restore_command (bart ARCHIVE-GET) will run as cluster_owner "${server.clusterOwner}", but bart runs only as the BART user "${ctx.config.global.bartHost.user}" or root: ` +
        'recovery cannot fetch WAL that way; use -c to copy the WAL into the restored cluster',
    );
  }
  const workers = o.workers ?? server.workers;
  const checksumAlgorithm: ChecksumAlgorithm = o.disableChecksum ? 'NONE' : info.checksumAlgorithm;
  return { config: ctx.config, server, info, backupDir: entry.dir, chain, path, target: parsed, scan, roots, tablespaceDest, wal, copyWals, workers, checksumAlgorithm, remote };
}

/** restore_command for the restored cluster. */
function restoreCommand(plan: Plan): string {
  if (plan.copyWals) return `cp ${shellQuoteForRestoreCommand(join(plan.path, COPIED_WAL_DIR))}/%f %p`;
  // On another host, bart is not there: fetch from the BART host's archive with scp, as BART did.
  if (plan.remote) return scpRestoreCommand(`${plan.config.global.bartHost.user}@${plan.config.global.bartHost.host}`, plan.server.archivePath);
  return [process.execPath, bartScript()].map(shellQuoteForRestoreCommand).join(' ') +
    ` -c ${shellQuoteForRestoreCommand(plan.config.path)} ARCHIVE-GET -s ${shellQuoteForRestoreCommand(plan.server.name)} %f %p`;
}

/** Writes everything after the files: links, WAL, recovery settings, ownership; then unveils PG_VERSION. */
async function finishDataDirectory(plan: Plan, o: RestoreOptions, target: RestoreTarget): Promise<[string, string][]> {
  const { path, info } = plan;
  const major = Math.floor(info.serverVersionNum / 10000);
  if (info.tablespaces.length > 0) {
    await target.makeDir(join(path, 'pg_tblspc'), 0o700);
    for (const t of info.tablespaces) {
      const link = join(path, 'pg_tblspc', String(t.oid));
      await target.remove(link);
      await target.symlink(plan.tablespaceDest.get(t.oid)!, link);
    }
  }
  // The links above are the truth; PostgreSQL would recreate them from tablespace_map.
  await target.remove(join(path, 'tablespace_map'));
  // A backup of a standby carries its signal file; only what this restore asks for may remain.
  await target.remove(join(path, 'standby.signal'));
  await target.remove(join(path, 'recovery.signal'));

  if (plan.copyWals) {
    const dir = join(path, COPIED_WAL_DIR);
    await target.makeDir(dir, 0o700);
    if (plan.remote) await uploadWalFiles(target, plan.server.archivePath, plan.wal.map((w) => w.name), dir);
    else await copyWal(plan.server.archivePath, plan.wal, dir, Math.max(2, plan.workers));
  }

  const settings = recoverySettings({
    major,
    restoreCommand: restoreCommand(plan),
    target: plan.target.target,
    inclusive: plan.target.inclusive,
    ...(plan.target.timeline !== undefined ? { timeline: plan.target.timeline } : {}),
    ...(plan.target.action !== undefined ? { action: plan.target.action } : {}),
    standby: o.standby === true,
  });
  const autoConf = join(path, 'postgresql.auto.conf');
  const existing = (await target.readFile(autoConf)) ?? '';
  const comment = `recovery settings written by pgbart RESTORE of backup ${info.id} (server ${plan.server.name}) at ${new Date().toISOString()}`;
  await target.writeFile(autoConf, mergeAutoConf(existing, settings, comment), 0o600);
  await target.writeFile(join(path, signalFileName({ standby: o.standby === true })), '', 0o600);
  const stale = recoverySettingsIn((await target.readFile(join(path, 'postgresql.conf'))) ?? '');
  if (stale.length > 0) {
    log.warning(`postgresql.conf of the restored cluster sets ${stale.join(', ')}; postgresql.auto.conf overrides restore_command and the targets, but check the rest`);
  }
  return settings;
}

/** Makes the restored tree belong to cluster_owner (possible only as root) or says who must. */
async function fixOwnership(plan: Plan, target: RestoreTarget): Promise<void> {
  const owner = plan.server.clusterOwner;
  if (plan.remote) {
    // Files written over ssh belong to the ssh user.
    const user = target.description.slice(0, target.description.indexOf('@'));
    if (user !== owner) log.warning(`the restored files belong to "${user}" on ${target.description.slice(user.length + 1)}, but cluster_owner is "${owner}": PostgreSQL must run as the owner of the files`);
    return;
  }
  if (isRoot()) {
    const user = lookupOsUser(owner);
    if (!user) throw new BartError(`cluster_owner "${owner}" of server ${plan.server.name} does not exist on this host`);
    for (const root of plan.roots) await target.chownTree(root.path, user.uid, user.gid);
    return;
  }
  if (currentUserName() !== owner) {
    log.warning(
      `the restored files belong to ${currentUserName()}, but PostgreSQL must run as cluster_owner "${owner}": as root, run chown -R ${owner} ${plan.roots.map((r) => shellWord(r.path)).join(' ')}`,
    );
  }
}

/**
 * `bart RESTORE`: restores a full backup, or an incremental one through its chain, into an empty or
 * absent directory on this host or (-r) on another one over ssh, with
 * tablespaces, recovery settings for point-in-time recovery, and checksums verified as data streams.
 * Everything that can be checked is checked before the first byte is written; a failure later
 * removes what was written, leaving PATH (and tablespace locations) as they were.
 */
export async function restore(ctx: CommandContext, options: RestoreOptions): Promise<number> {
  if (options.remoteHost === undefined) return restoreTo(ctx, options, new LocalRestoreTarget());
  const target = await SshRestoreTarget.connect(parseRemoteDestination(options.remoteHost));
  try {
    return await restoreTo(ctx, options, target);
  } finally {
    await target.close().catch(() => undefined);
  }
}

async function restoreTo(ctx: CommandContext, options: RestoreOptions, target: RestoreTarget): Promise<number> {
  const checkStart = Date.now();
  const plan = await preparePlan(ctx, options, target);
  // A reader, not the exclusive server lock: BACKUP and other RESTOREs go on, DELETE and MANAGE -d refuse.
  const serverDir = serverCatalogDir(ctx.config, plan.server);
  const reader = await registerRestore(serverDir, { backups: plan.chain.map((e) => e.info.id), path: target.description === 'local' ? plan.path : `${target.description}:${plan.path}` });
  try {
    // A DELETE that finished between our listing and the registration took a backup away.
    const now = await listBackups(ctx.config, plan.server);
    for (const link of plan.chain) {
      if (!now.some((e) => e.complete && e.info.id === link.info.id)) throw new BartError(`backup ${link.info.id} of server ${plan.server.name} was deleted while RESTORE started`);
    }
    log.debug(`checks took ${Date.now() - checkStart} ms`);
    return await restorePlan(plan, options, target);
  } finally {
    await reader.release();
  }
}

async function restorePlan(plan: Plan, options: RestoreOptions, target: RestoreTarget): Promise<number> {
  const { info, path } = plan;
  log.info(`restoring backup ${info.id}${info.name ? ` (${info.name})` : ''} of server ${plan.server.name}: ${info.format} format, compression ${info.compression}, ${plan.scan.totalFiles} files, ${formatBytes(plan.scan.totalBytes)}`);
  log.info(`restore path: ${path}; recovery target: ${plan.target.description}${plan.target.timeline ? `, timeline ${plan.target.timeline}` : ''}`);
  const dbHost = plan.server.remoteHost;
  if (!plan.remote && dbHost) {
    // BART restored to remote_host when -r was left out; pgbart restores where it is told (-r), so say where this goes.
    log.info(`restoring on this host (the BART host); to restore on the database host, add -r ${dbHost.user}@${dbHost.host}`);
  }

  const controller = new AbortController();
  const onSignal = () => controller.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const txn = new RestoreTransaction(target);
  const started = Date.now();
  let settings: [string, string][];
  let extracted;
  try {
    for (const root of plan.roots) await txn.claim(root);
    await target.writeFile(join(path, INCOMPLETE_MARKER), `pgbart RESTORE of backup ${info.id} in progress (pid ${process.pid}, started ${new Date().toISOString()})\n`, 0o600);
    const destinations = new Map<string, string>([[BASE_ARCHIVE, path]]);
    for (const [oid, dest] of plan.tablespaceDest) destinations.set(String(oid), dest);
    const taskBytes = Math.min(256 * 1024 * 1024, Math.max(16 * 1024 * 1024, Math.ceil(plan.scan.totalBytes / (plan.workers * 4))));
    extracted = await extractBackup(
      planRestore({ backupDir: plan.chain[0]!.dir, info: plan.chain[0]!.info, scan: plan.scan, destinations, checksumAlgorithm: plan.checksumAlgorithm, taskBytes, holdBack: { PG_VERSION: PG_VERSION_PENDING } }),
      target,
      plan.workers,
      controller.signal,
    );
    controller.signal.throwIfAborted();
    if (plan.chain.length > 1) {
      const applyOpts = { destinations, holdBack: { PG_VERSION: PG_VERSION_PENDING }, checksumAlgorithm: plan.checksumAlgorithm, target, keepInBase: [INCOMPLETE_MARKER] };
      for (const [i, link] of plan.chain.slice(1).entries()) {
        const applied = await applyIncremental(link, applyOpts, { newest: i === plan.chain.length - 2, previous: plan.chain[i]! });
        log.info(`applied incremental backup ${link.info.id}: ${applied.files} files, ${formatBytes(applied.bytes)}`);
        controller.signal.throwIfAborted();
      }
      await removeDropped(plan.chain[plan.chain.length - 1]!, applyOpts);
    }
    log.debug(`files written after ${Date.now() - started} ms`);
    settings = await finishDataDirectory(plan, options, target);
    await fixOwnership(plan, target);
    controller.signal.throwIfAborted();
    log.debug(`recovery settings written after ${Date.now() - started} ms`);
    for (const root of plan.roots) await target.syncTree(root.path);
    log.debug(`synced to disk after ${Date.now() - started} ms`);
    // Only now, with everything durable, does the directory become a startable cluster.
    await target.rename(join(path, PG_VERSION_PENDING), join(path, 'PG_VERSION'));
    await target.remove(join(path, INCOMPLETE_MARKER));
    await target.syncDir(path);
  } catch (err) {
    const clean = await txn.rollback();
    const why = controller.signal.aborted ? 'RESTORE was interrupted' : errorMessage(err);
    // A target we could not clean (e.g. the ssh connection to it is gone) still holds the marker and
    // no PG_VERSION, so PostgreSQL refuses to start it.
    const left = clean
      ? `nothing was left in ${plan.roots.map((r) => `"${r.path}"`).join(', ')}`
      : `"${path}" on ${target.description === 'local' ? 'this host' : target.description} could not be cleaned up: it holds an incomplete restore (${INCOMPLETE_MARKER}, no PG_VERSION) that will not start; remove it`;
    throw new BartError(`${why}; ${left}`, controller.signal.aborted ? 130 : 1);
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  }

  const seconds = (Date.now() - started) / 1000;
  const rate = seconds > 0 ? ` (${formatBytes(extracted.bytes / seconds)}/s)` : '';
  const verified = plan.checksumAlgorithm === 'NONE' ? (options.disableChecksum ? 'checksums not verified (--disable-checksum)' : 'the backup has no file checksums') : `${plan.checksumAlgorithm} checksums verified`;
  log.fileOnly('INFO', `RESTORE: peak RSS ${Math.round(process.resourceUsage().maxRSS / 1024)} MB`);
  log.info(`restored ${extracted.files} files, ${formatBytes(extracted.bytes)} in ${formatDuration(seconds * 1000)}${rate} with ${plan.workers} worker(s); ${verified}`);
  for (const t of info.tablespaces) log.info(`tablespace ${t.name} (OID ${t.oid}) restored to ${plan.tablespaceDest.get(t.oid)} (pg_tblspc/${t.oid} links there)`);
  if (plan.copyWals) log.info(`copied ${plan.wal.length} archived WAL files to ${join(path, COPIED_WAL_DIR)}`);
  log.info(`${signalFileName({ standby: options.standby === true })} created; recovery settings added to postgresql.auto.conf:`);
  for (const [k, v] of settings) if (v !== '' && k !== 'archive_mode') log.info(`  ${k} = ${v}`);
  log.info('archive_mode is turned off in the restored cluster (postgresql.auto.conf), so it does not archive into the catalog of the server it was copied from; turn it back on when it becomes a primary that must be backed up');
  if (plan.target.target.kind !== 'none' && options.standby !== true) {
    const action = plan.target.action ?? 'pause';
    if (action === 'pause') log.info('recovery pauses at the target (PostgreSQL\'s default): check the data, then end recovery with SELECT pg_wal_replay_resume(); or restore again with another target');
    else log.info(`at the target, recovery will ${action === 'promote' ? 'end and the server accept writes (promote)' : 'shut the server down (shutdown)'}`);
  }
  const localNames = new Set(['localhost', '127.0.0.1', '::1', hostname()]);
  if (!plan.remote && localNames.has(plan.server.host)) {
    log.info(`the source server runs on this host (port ${plan.server.port}): set another port in ${join(path, 'postgresql.conf')} before starting the restored one`);
  }
  const owner = plan.server.clusterOwner;
  const command = `${pgCtlFor(Math.floor(info.serverVersionNum / 10000))} -D ${shellWord(path)} start`;
  if (plan.remote) {
    log.info(`restore complete; on ${target.description.slice(target.description.indexOf('@') + 1)}, start the restored server as ${target.description.slice(0, target.description.indexOf('@'))} with: pg_ctl -D ${shellWord(path)} start`);
    return 0;
  }
  log.info(`restore complete; start the restored server${currentUserName() !== owner || isRoot() ? ` as ${owner}` : ''} with: ${command}`);
  return 0;
}
