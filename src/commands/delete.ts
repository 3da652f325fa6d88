// Command: DELETE, backups and their incremental descendants removed from the catalog, keep exempt.

import { acquireServerLock } from '../catalog/lock.js';
import { findBackup, listBackups, type CatalogEntry } from '../catalog/catalog.js';
import { serverCatalogDir } from '../catalog/layout.js';
import {
  backupLabel,
  childrenFirst,
  entryWithDescendants,
  planWalRemoval,
  removeFromCatalog,
} from '../retention/obsolete.js';
import { chainRoot } from '../retention/retention.js';
import { closeServerStorages, openServerStorages } from '../retention/server-storages.js';
import type { ServerConfig } from '../config/types.js';
import { crashPoint } from '../util/crash-point.js';
import { BartError } from '../util/errors.js';
import { formatBytes, formatTimestamp } from '../util/format.js';
import { log } from '../util/log.js';
import { selectOneServer, type CommandContext } from './context.js';

/** DELETE options as commander delivers them. */
export interface DeleteOptions {
  server?: string;
  backupid?: string;
  dryRun?: boolean;
}

/**
 * Resolves `-i ID|NAME[,ID|NAME...]|all` to the backups to delete, incremental descendants
 * included, children first. Policy (decided for pgbart, BART's docs are silent): a `keep` backup
 * is exempt from deletion as it is from retention. Naming a keep backup (or one whose chain holds
 * a keep backup) is refused with the MANAGE -c nokeep command to run first; `-i all` deletes every
 * backup except keep chains, which it names. Backups in progress or failed are not backups yet:
 * MANAGE -d removes failed ones. A damaged backup (unreadable backupinfo) is deleted only when named
 * by its identifier, with the incrementals built on it; `-i all` leaves it and names it.
 */
export function deletionTargets(
  entries: readonly CatalogEntry[],
  server: ServerConfig,
  select: string,
): CatalogEntry[] {
  const complete = entries.filter((e) => e.complete);
  const ids = new Set<string>();
  if (select.trim().toLowerCase() === 'all') {
    for (const e of complete) {
      // A keep chain stays whole: its full backup and every incremental built on it.
      const root = chainRoot(
        complete.map((c) => ({ id: c.info.id, parent: c.info.parent, status: c.info.status })),
        e.info.id,
      );
      if (e.info.status === 'keep' || root?.status === 'keep') {
        if (e.info.parent === undefined)
          log.info(
            `backup ${backupLabel(e)} is marked keep: not deleted, nor its incrementals (bart MANAGE -s ${server.name} -c nokeep -i ${e.info.id} first to delete it)`,
          );
        continue;
      }
      ids.add(e.info.id);
    }
    for (const e of entries) {
      if (e.damage === undefined) continue;
      const how = `DELETE -s ${server.name} -i ${e.info.id} deletes it`;
      log.info(`backup ${e.info.id} is damaged (${e.damage}): not deleted by -i all (${how})`);
    }
  } else {
    const wanted = select.split(',').map((s) => s.trim());
    if (wanted.some((w) => w === '')) throw new BartError(`DELETE -i "${select}": empty backup identifier in the list`);
    for (const w of wanted) {
      const hit = findBackup([...entries], server, w, { damaged: true });
      const family = hit.damage !== undefined ? [...complete, hit] : complete;
      for (const d of entryWithDescendants(family, hit.info.id)) {
        // Incrementals of a damaged backup are a broken chain: keep cannot save them (nor can MANAGE -c reach them).
        if (d.info.status === 'keep' && hit.damage === undefined) {
          const what =
            d === hit
              ? `backup ${backupLabel(d)}`
              : `backup ${backupLabel(hit)} has the incremental ${backupLabel(d)} which`;
          throw new BartError(
            `${what} is marked keep (exempt from deletion); run "bart MANAGE -s ${server.name} -c nokeep -i ${d.info.parent ?? d.info.id}" first`,
          );
        }
        ids.add(d.info.id);
      }
    }
  }
  return childrenFirst(entries.filter((e) => (e.complete || e.damage !== undefined) && ids.has(e.info.id)));
}

/**
 * `bart DELETE -s NAME -i ID|NAME[,ID|NAME...]|all [-n]`: lists the backups it deletes (named
 * ones and their incremental descendants), then deletes them and the archived WAL/MBM files no
 * remaining backup needs (catalog/wal-retention.ts), under the server lock, crash-safely
 * (catalog/obsolete.ts). -n lists and stops.
 */
export async function deleteBackups(ctx: CommandContext, options: unknown): Promise<number> {
  const o = options as DeleteOptions;
  const server = selectOneServer(ctx.config, o.server, 'DELETE');
  if (o.backupid === undefined || o.backupid.trim() === '')
    throw new BartError('DELETE needs -i/--backupid ID|NAME[,ID|NAME...]|all');
  const lock = o.dryRun
    ? undefined
    : await acquireServerLock(serverCatalogDir(ctx.config, server), 'DELETE', { deletes: true });
  const storages = openServerStorages(ctx.config, server);
  try {
    crashPoint('delete:locked');
    const entries = await listBackups(ctx.config, server, storages.repo);
    const targets = deletionTargets(entries, server, o.backupid);
    const explicit = new Set(o.backupid.toLowerCase() === 'all' ? targets.map((t) => t.info.id) : []);
    for (const w of o.backupid.split(',')) {
      const hit = targets.find((t) => t.info.id === w.trim() || t.info.name === w.trim());
      if (hit) explicit.add(hit.info.id);
    }
    const verb = o.dryRun ? '(dry run) would delete' : 'deleting';
    for (const t of [...targets].reverse()) {
      const how = explicit.has(t.info.id) ? '' : ` (incremental descendant of ${t.info.parent}, deleted with it)`;
      const what =
        t.damage !== undefined
          ? `damaged (${t.damage})`
          : `${t.info.status}, ${formatTimestamp(t.info.startTime)}, ${formatBytes(t.info.sizeBytes)}`;
      const kind = t.info.parent ? 'incremental backup' : 'backup';
      log.info(`${verb} ${kind} ${backupLabel(t)} of server ${server.name}: ${what}${how}`);
    }
    if (targets.length === 0) {
      log.info(`server ${server.name}: no backup to delete`);
      return 0;
    }
    if (o.dryRun) {
      const wal = await planWalRemoval(ctx.config, server, storages, entries, new Set(targets.map((t) => t.info.id)));
      log.info(
        `(dry run) would delete ${wal.plan.remove.length} archived WAL/MBM file(s) (${formatBytes(wal.bytes)}): ${wal.plan.reason}`,
      );
      return 0;
    }
    const result = await removeFromCatalog(ctx.config, server, storages, targets, []);
    log.info(
      `server ${server.name}: deleted ${result.backups.length} backup(s) and ${result.walFiles} archived WAL/MBM file(s) (${formatBytes(result.walBytes)})`,
    );
    return 0;
  } finally {
    await closeServerStorages(storages);
    await lock?.release();
  }
}
