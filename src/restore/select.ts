// Restore phase: choosing the backup or incremental chain to restore.

import type { BackupInfo } from '../catalog/backup-info.js';
import { findBackup, latestBackup, listBackups, type CatalogEntry } from '../catalog/catalog.js';
import { resolveChain } from '../catalog/chain.js';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { BartError } from '../util/errors.js';
import { log } from '../util/log.js';
import { parseLsn } from '../util/lsn.js';
import { isKnownTimeZone, parseTargetOptions, type TargetOptions } from './recovery-target.js';

/** The backup a restore brings back, and what it is restored from. */
export interface Selection {
  /** The backup asked for (-i) or chosen. */
  entry: CatalogEntry;
  /** The backups to restore, full backup first (just one for a full backup). */
  chain: CatalogEntry[];
}

/** The zone a target time without one is read in: the backup's (the BART host's), else ours. */
export function zoneOf(info: BackupInfo): string {
  return isKnownTimeZone(info.timezone) ? info.timezone : Intl.DateTimeFormat().resolvedOptions().timeZone;
}

function pickBackup(entries: CatalogEntry[], server: ServerConfig, id: string | undefined): CatalogEntry {
  if (id !== undefined) {
    const hit = findBackup(entries, server, id);
    // An obsolete backup is still whole until MANAGE deletes it; under pressure it may be the one needed.
    if (hit.info.status === 'obsolete') {
      log.warning(`backup ${hit.info.id} is marked obsolete (MANAGE will delete it); restoring it as asked`);
    }
    return hit;
  }
  const latest = latestBackup(entries);
  if (!latest) {
    throw new BartError(
      `server ${server.name} has no complete active backup to restore (see bart SHOW-BACKUPS -s ${server.name})`,
    );
  }
  return latest;
}

/**
 * Without -i: the newest restorable backup, or, for a time or LSN target, the newest one that ended
 * before the target (what a DBA restoring "to 10:42" means). When none did, the oldest is taken and the
 * target check then names the earliest point any backup can reach.
 */
function pickBackupForTarget(entries: CatalogEntry[], server: ServerConfig, o: TargetOptions): CatalogEntry {
  const newest = pickBackup(entries, server, undefined);
  const usable = entries.filter((e) => e.complete && (e.info.status === 'active' || e.info.status === 'keep'));
  const t = parseTargetOptions(o, () => zoneOf(newest.info));
  let fits: CatalogEntry[] | undefined;
  if (t.target.kind === 'time' && t.time) {
    fits = usable.filter((e) => e.info.stopTime.getTime() <= t.time!.getTime());
  } else if (t.target.kind === 'lsn') {
    fits = usable.filter((e) => parseLsn(e.info.stopLsn) <= parseLsn((t.target as { value: string }).value));
  }
  if (!fits) return newest;
  const pick = fits[fits.length - 1] ?? usable[0]!;
  if (pick !== newest) {
    log.info(
      `no -i given: using backup ${pick.info.id}, the newest that ended before the recovery target (${t.description})`,
    );
  }
  return pick;
}

/**
 * The backup -i names (an obsolete one with a warning), or without -i the one that suits the recovery
 * target; an incremental comes with its chain: the full backup, then each incremental in order.
 */
export async function selectBackup(
  config: BartConfig,
  server: ServerConfig,
  backupId: string | undefined,
  targetOptions: TargetOptions,
): Promise<Selection> {
  const entries = await listBackups(config, server);
  const entry =
    backupId !== undefined
      ? pickBackup(entries, server, backupId)
      : pickBackupForTarget(entries, server, targetOptions);
  const chain = entry.info.parent !== undefined ? resolveChain(entries, entry, server) : [entry];
  return { entry, chain };
}

/** Refuses when a DELETE that finished between our listing and the reader registration took a backup away. */
export async function checkChainStillListed(
  config: BartConfig,
  server: ServerConfig,
  chain: CatalogEntry[],
): Promise<void> {
  const now = await listBackups(config, server);
  for (const link of chain) {
    if (!now.some((e) => e.complete && e.info.id === link.info.id)) {
      throw new BartError(`backup ${link.info.id} of server ${server.name} was deleted while RESTORE started`);
    }
  }
}
