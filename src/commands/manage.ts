// Command: MANAGE, retention marking, WAL compression, -l/-d of obsolete backups and keep/nokeep.

import type { ServerConfig } from '../config/types.js';
import { formatRetentionPolicy } from '../config/retention-policy.js';
import { writeBackupInfo } from '../catalog/backup-info.js';
import { acquireServerLock, type CatalogLock } from '../catalog/lock.js';
import { findBackup, listBackups, type CatalogEntry } from '../catalog/catalog.js';
import { serverCatalogDir } from '../catalog/layout.js';
import {
  backupLabel,
  entryWithDescendants,
  obsoleteTargets,
  planWalRemoval,
  removeFromCatalog,
} from '../retention/obsolete.js';
import { findLeftovers } from '../retention/leftovers.js';
import { withServerStorages } from '../retention/server-storages.js';
import { chainRoot, evaluateRetention, type RetentionBackup } from '../retention/retention.js';
import { readVerifications } from '../catalog/verify-record.js';
import { retentionNow } from '../retention/clock.js';
import { compressArchive } from '../archive/compress.js';
import { openWalArchive } from '../storage/open-repository.js';
import { crashPoint } from '../util/crash-point.js';
import { BartError, errorMessage } from '../util/errors.js';
import { formatBytes, formatTimestamp } from '../util/format.js';
import { log } from '../util/log.js';
import { selectServers, type CommandContext } from './context.js';
import { manageListing, printListing } from './manage-list.js';

/** MANAGE options as commander delivers them. */
export interface ManageOptions {
  server?: string;
  listObsolete?: boolean;
  deleteObsolete?: boolean;
  changeStatus?: 'keep' | 'nokeep';
  backupid?: string;
  dryRun?: boolean;
  output?: string;
}

/**
 * `bart MANAGE [-s NAME|all] [-l] [-d] [-c keep|nokeep -i ID|NAME|all] [-n] [--output json]`:
 * plain MANAGE marks backups obsolete by the retention policy and gzips archived WAL when
 * wal_compression is enabled; -l lists obsolete backups, the WAL -d would free and leftovers of
 * crashed commands; -d deletes them; -c keep|nokeep changes a full backup and its chain; -n says
 * what would happen and changes nothing. Every changing form holds the server lock.
 * Test hook: `PGBART_NOW` (catalog/retention-clock.ts) fixes "now" for window policies.
 */
export async function manage(ctx: CommandContext, options: unknown): Promise<number> {
  const o = options as ManageOptions;
  const modes = [o.listObsolete ? '-l' : '', o.deleteObsolete ? '-d' : '', o.changeStatus ? '-c' : ''].filter(Boolean);
  if (modes.length > 1)
    throw new BartError(`MANAGE options ${modes.join(' and ')} cannot be combined; use one at a time`);
  if (o.changeStatus && o.backupid === undefined) throw new BartError('MANAGE -c keep|nokeep needs -i ID|NAME|all');
  if (o.backupid !== undefined && !o.changeStatus)
    throw new BartError('MANAGE -i/--backupid is only valid together with -c keep|nokeep');
  if (o.output === 'json' && !o.listObsolete)
    throw new BartError('MANAGE --output json is only valid with -l (list obsolete backups)');
  const servers = selectServers(ctx.config, o.server);
  const now = retentionNow();

  if (o.listObsolete) {
    const listings = [];
    for (const server of servers) listings.push(await manageListing(ctx.config, server));
    if (o.output === 'json') process.stdout.write(JSON.stringify(listings, null, 2) + '\n');
    else for (const l of listings) printListing(l);
    return 0;
  }

  let failures = 0;
  for (const server of servers) {
    let lock: CatalogLock | undefined;
    try {
      if (!o.dryRun)
        lock = await acquireServerLock(
          serverCatalogDir(ctx.config, server),
          o.deleteObsolete ? 'MANAGE -d' : o.changeStatus ? 'MANAGE -c' : 'MANAGE',
          { deletes: o.deleteObsolete === true },
        );
      crashPoint('manage:locked');
      if (o.deleteObsolete) await deleteObsolete(ctx, server, o.dryRun === true);
      else if (o.changeStatus) await changeStatus(ctx, server, o.changeStatus, o.backupid!, o.dryRun === true);
      else await applyPolicy(ctx, server, now, o.dryRun === true);
    } catch (err) {
      failures++;
      log.error(`server "${server.name}": ${errorMessage(err)}`);
    } finally {
      await lock?.release();
    }
  }
  return failures === 0 ? 0 : 1;
}

/**
 * retention_requires_verified_restore: marks the full backups whose last VERIFY-RESTORE passed, or
 * that of an incremental of their chain (which restored them too).
 */
async function markVerifiedRestores(backups: RetentionBackup[], complete: readonly CatalogEntry[]): Promise<void> {
  for (const entry of complete) {
    if ((await readVerifications(entry.storage, entry.key)).restore?.result !== 'OK') continue;
    const root = chainRoot(backups, entry.info.id);
    if (root) root.verifiedRestore = true;
  }
}

const would = (dryRun: boolean, doing: string, future: string) => (dryRun ? `(dry run) would ${future}` : doing);

/** Names each damaged backup: retention neither counts nor deletes it, and it keeps the archive whole. */
function warnDamaged(entries: readonly CatalogEntry[], server: ServerConfig): void {
  for (const e of entries) {
    if (e.damage === undefined) continue;
    const repair = `bart INIT -r -s ${server.name} -i ${e.info.id} may rebuild its backupinfo`;
    const remove = `bart DELETE -s ${server.name} -i ${e.info.id} deletes it`;
    const what = `backup ${e.info.id} is damaged (${e.damage})`;
    log.warning(`server ${server.name}: ${what}; MANAGE leaves it alone (${repair}, ${remove})`);
  }
}

/** Plain MANAGE: mark obsolete by policy, then gzip archived WAL when enabled. */
async function applyPolicy(ctx: CommandContext, server: ServerConfig, now: Date, dryRun: boolean): Promise<void> {
  log.info(
    `processing server ${server.name} (retention policy ${formatRetentionPolicy(server.retentionPolicy)}, now ${now.toISOString()})`,
  );
  const entries = await listBackups(ctx.config, server);
  warnDamaged(entries, server);
  const complete = entries.filter((e) => e.complete);
  const backups: RetentionBackup[] = complete.map((e) => ({
    id: e.info.id,
    ...(e.info.parent ? { parent: e.info.parent } : {}),
    status: e.info.status,
    startTime: e.info.startTime,
  }));
  const requireVerified = server.retentionRequiresVerifiedRestore;
  if (requireVerified) await markVerifiedRestores(backups, complete);
  const changes = evaluateRetention(backups, server.retentionPolicy, now, requireVerified);
  const byId = new Map(complete.map((e) => [e.info.id, e]));
  for (const change of changes) {
    const entry = byId.get(change.id)!;
    log.info(
      would(
        dryRun,
        `marking backup ${backupLabel(entry)} as ${change.to}: ${change.reason}`,
        `mark backup ${backupLabel(entry)} as ${change.to}: ${change.reason}`,
      ),
    );
    if (!dryRun) {
      await writeBackupInfo(entry.storage, entry.key, { ...entry.info, status: change.to });
      crashPoint('manage:marked');
    }
  }
  if (changes.length === 0) log.info(`server ${server.name}: no backup becomes obsolete`);
  if (server.walCompression) {
    // Through the WAL archive storage: the bucket for an S3 server, the (encrypting) driver otherwise.
    const archive = openWalArchive(ctx.config, server);
    const result = await compressArchive(archive, dryRun).finally(() => archive.close());
    if (result.files.length === 0) log.info(`server ${server.name}: no archived WAL segment to compress`);
    else if (dryRun)
      log.info(
        `(dry run) would compress ${result.files.length} archived WAL segment(s) (${formatBytes(result.bytesBefore)}) with gzip`,
      );
    else
      log.info(
        `compressed ${result.files.length} archived WAL segment(s) of server ${server.name}: ${formatBytes(result.bytesBefore)} -> ${formatBytes(result.bytesAfter)}`,
      );
  }
}

/** MANAGE -c keep|nokeep -i: a full backup and its incrementals become keep, or active again. */
async function changeStatus(
  ctx: CommandContext,
  server: ServerConfig,
  status: 'keep' | 'nokeep',
  select: string,
  dryRun: boolean,
): Promise<void> {
  const entries = await listBackups(ctx.config, server);
  const complete = entries.filter((e) => e.complete);
  let roots: CatalogEntry[];
  if (select.toLowerCase() === 'all') {
    roots = complete.filter((e) => e.info.parent === undefined);
  } else {
    const hit = findBackup(entries, server, select);
    if (hit.info.parent !== undefined) {
      throw new BartError(
        `backup ${backupLabel(hit)} of server ${server.name} is an incremental backup; its status follows its full backup: change that one (its whole chain changes with it)`,
      );
    }
    roots = [hit];
  }
  const to = status === 'keep' ? 'keep' : 'active';
  let changed = 0;
  for (const root of roots) {
    for (const entry of entryWithDescendants(complete, root.info.id).reverse()) {
      // nokeep undoes keep only: it never revives a backup retention made obsolete.
      if (entry.info.status === to || (status === 'nokeep' && entry.info.status !== 'keep')) continue;
      const kind = entry === root ? 'backup' : `incremental backup (of ${root.info.id})`;
      log.info(
        would(
          dryRun,
          `${kind} ${backupLabel(entry)} of server ${server.name}: ${entry.info.status} -> ${to}`,
          `change ${kind} ${backupLabel(entry)} of server ${server.name} from ${entry.info.status} to ${to}`,
        ),
      );
      if (!dryRun) await writeBackupInfo(entry.storage, entry.key, { ...entry.info, status: to });
      changed++;
    }
  }
  if (changed === 0)
    log.info(`server ${server.name}: ${roots.length === 0 ? 'no backups' : `already ${to}`}; nothing changed`);
}

/** MANAGE -d: obsolete backups (with what depends on them), WAL no remaining backup needs, leftovers. */
async function deleteObsolete(ctx: CommandContext, server: ServerConfig, dryRun: boolean): Promise<void> {
  await withServerStorages(ctx.config, server, async (storages) => {
    const entries = await listBackups(ctx.config, server, storages.repo);
    warnDamaged(entries, server);
    const targets = obsoleteTargets(entries);
    const leftovers = await findLeftovers(ctx.config, server, !dryRun, storages);
    if (dryRun) {
      for (const t of targets)
        log.info(
          `(dry run) would delete ${t.info.parent ? 'incremental ' : ''}backup ${backupLabel(t)} (${t.info.status}, ${formatTimestamp(t.info.startTime)}, ${formatBytes(t.info.sizeBytes)})`,
        );
      const removed = new Set(targets.map((t) => t.info.id));
      const wal = await planWalRemoval(ctx.config, server, storages, entries, removed);
      log.info(
        `(dry run) would delete ${wal.plan.remove.length} archived WAL/MBM file(s) (${formatBytes(wal.bytes)}): ${wal.plan.reason}`,
      );
      for (const l of leftovers) log.info(`(dry run) would remove ${l.description}: ${l.path}`);
      return;
    }
    if (targets.length === 0) log.info(`server ${server.name}: no obsolete backups to delete`);
    const result = await removeFromCatalog(ctx.config, server, storages, targets, leftovers);
    log.info(
      `server ${server.name}: deleted ${result.backups.length} backup(s), ${result.walFiles} archived WAL/MBM file(s) (${formatBytes(result.walBytes)}), ${result.leftovers} leftover(s)`,
    );
  });
}
