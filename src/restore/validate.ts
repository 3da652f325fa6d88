// Restore phase: the checks made before the first byte is written, target, backups, roots, free space.

import type { BackupInfo } from '../catalog/backup-info.js';
import type { CatalogEntry } from '../catalog/catalog.js';
import { readRestoredState } from '../catalog/chain.js';
import type { BartConfig, ServerConfig } from '../config/types.js';
import type { RestoreTarget } from '../hosts/restore-target.js';
import type { RepositoryStorage } from '../storage/storage.js';
import { BartError } from '../util/errors.js';
import { formatBytes } from '../util/format.js';
import { log } from '../util/log.js';
import { currentUserName } from '../util/os-user.js';
import { scanBackup, type BackupScan } from './plan.js';
import {
  checkTargetAgainstBackup,
  parseTargetOptions,
  type ParsedTarget,
  type TargetOptions,
} from './recovery-target.js';
import { INCOMPLETE_MARKER } from './rollback.js';
import { zoneOf } from './select.js';
import type { ArchiveSize, RestoreRoot } from './tablespaces.js';

/**
 * Parses the recovery target options and checks them against the backup: the target lies after
 * the backup's end, on a timeline the archive can reach.
 */
export async function validateRecoveryTarget(
  o: TargetOptions,
  info: BackupInfo,
  archive: RepositoryStorage,
): Promise<ParsedTarget> {
  const parsed = parseTargetOptions(o, () => zoneOf(info));
  await checkTargetAgainstBackup(parsed, info, archive);
  return parsed;
}

/** What the read-only pass over the chain found. */
export interface ChainScan {
  /** The full backup's scan (it is what the engine extracts). */
  scan: BackupScan;
  /** For an incremental: restored bytes and files per archive, from the newest backup's manifest. */
  restored: Map<string, ArchiveSize> | undefined;
}

/** Checks every backup of the chain is complete and undamaged (manifest, artifacts) before anything is written. */
export async function scanChain(chain: CatalogEntry[], entry: CatalogEntry): Promise<ChainScan> {
  const scan = await scanBackup(chain[0]!.storage, chain[0]!.dataKey, chain[0]!.info);
  for (const link of chain.slice(1)) await scanBackup(link.storage, link.dataKey, link.info);
  const restored = chain.length > 1 ? (await readRestoredState(entry.storage, entry.dataKey)).archives : undefined;
  return { scan, restored };
}

/** Refuses a root that is a file, holds something (or an interrupted restore), or cannot be written. */
export async function checkRoot(target: RestoreTarget, root: RestoreRoot): Promise<void> {
  const s = root.state;
  if (s.kind === 'not-directory') throw new BartError(`${root.what} "${root.path}" exists and is not a directory`);
  if (s.kind === 'not-empty') {
    if (s.sample === INCOMPLETE_MARKER) {
      throw new BartError(
        `${root.what} "${root.path}" holds an interrupted restore (${INCOMPLETE_MARKER}); ` +
          'remove its contents and run RESTORE again, or complete it with RESTORE --delta',
      );
    }
    throw new BartError(
      `${root.what} "${root.path}" is not empty (it holds "${s.sample}"); ` +
        'RESTORE writes only into an empty or absent directory ' +
        '(or, with --delta, a data directory of the same cluster)',
    );
  }
  await checkWritable(target, root);
}

/** Refuses a root whose directory (or, when absent, nearest existing parent) this process cannot write. */
export async function checkWritable(target: RestoreTarget, root: RestoreRoot): Promise<void> {
  const s = root.state;
  const dir = s.kind === 'absent' ? s.existingParent : root.path;
  if (!(await target.writable(dir))) {
    const who = target.spec.kind === 'local' ? currentUserName() : target.description;
    throw new BartError(`${root.what} "${root.path}": "${dir}" is not writable by ${who}`);
  }
}

/** Sums what each file system must hold and refuses when one has less free space. */
export async function checkFreeSpace(target: RestoreTarget, needs: { path: string; bytes: number }[]): Promise<void> {
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
      throw new BartError(
        `not enough free space for ${d.paths.join(', ')}: the restore needs ${formatBytes(d.need)}, ` +
          `the file system of "${d.at}" has ${formatBytes(d.free)} free`,
      );
    }
  }
}

/**
 * Warns when the restored cluster's restore_command (bart ARCHIVE-GET on this host) would run as
 * a cluster_owner that cannot run bart: recovery would find no WAL.
 */
export function warnArchiveGetUser(config: BartConfig, server: ServerConfig, remote: boolean, copyWals: boolean): void {
  if (!remote && !copyWals && server.clusterOwner !== config.global.bartHost.user) {
    log.warning(
      `restore_command (bart ARCHIVE-GET) will run as cluster_owner "${server.clusterOwner}", ` +
        `but bart runs only as the BART user "${config.global.bartHost.user}" or root: ` +
        'recovery cannot fetch WAL that way; use -c to copy the WAL into the restored cluster',
    );
  }
}
