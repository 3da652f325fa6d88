// Restore phase: tablespaces remapped (--tablespace-map, tablespace_path) and the roots a restore writes to.

import { isAbsolute, join, relative } from 'node:path';
import type { BackupInfo } from '../catalog/backup-info.js';
import type { ServerConfig } from '../config/types.js';
import type { PathState, RestoreTarget } from '../hosts/restore-target.js';
import { BartError } from '../util/errors.js';

/** A place a restore writes to: the data directory or a tablespace location. */
export interface RestoreRoot {
  path: string;
  /** Names it in messages, e.g. `restore path`. */
  what: string;
  state: PathState;
  /** Bytes of content that land there. */
  bytes: number;
  files: number;
}

/** Restored bytes and file count of one archive (`base` or a tablespace OID). */
export interface ArchiveSize {
  bytes: number;
  files: number;
}

/** True when `inner` is `outer` or inside it. */
function within(inner: string, outer: string): boolean {
  const rel = relative(outer, inner);
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel));
}

/**
 * Where each tablespace of the backup is restored: --tablespace-map over tablespace_path over the
 * original location. Refuses a --tablespace-map OID that is not a tablespace of the backup.
 */
export function tablespaceDestinations(
  info: BackupInfo,
  server: ServerConfig,
  cliMap: Map<number, string> | undefined,
): Map<number, string> {
  const tablespaceDest = new Map<number, string>();
  const known = new Set(info.tablespaces.map((t) => t.oid));
  for (const [oid] of cliMap ?? []) {
    if (!known.has(oid)) {
      throw new BartError(
        `--tablespace-map names OID ${oid}, which is not a tablespace of backup ${info.id} ` +
          `(its tablespaces: ${[...known].join(', ') || 'none'})`,
      );
    }
  }
  for (const t of info.tablespaces) {
    tablespaceDest.set(t.oid, cliMap?.get(t.oid) ?? server.tablespacePath.get(t.oid) ?? t.location);
  }
  return tablespaceDest;
}

/**
 * The restore path, then each tablespace location, with what is there now and what lands there;
 * refuses a tablespace location that overlaps the restore path or another location.
 */
export async function restoreRoots(
  target: RestoreTarget,
  path: string,
  base: ArchiveSize,
  info: BackupInfo,
  tablespaceDest: Map<number, string>,
  sizes: Map<string, ArchiveSize>,
): Promise<RestoreRoot[]> {
  const roots: RestoreRoot[] = [];
  roots.push({ path, what: 'restore path', state: await target.inspect(path), bytes: base.bytes, files: base.files });
  for (const t of info.tablespaces) {
    const dest = tablespaceDest.get(t.oid)!;
    const sum = sizes.get(String(t.oid)) ?? { bytes: 0, files: 0 };
    for (const other of roots) {
      if (within(dest, other.path) || within(other.path, dest)) {
        throw new BartError(
          `tablespace ${t.name} (OID ${t.oid}) would be restored to "${dest}", which overlaps ${other.what} ` +
            `"${other.path}"; map it elsewhere with --tablespace-map ${t.oid}=/path`,
        );
      }
    }
    const what = `tablespace ${t.name} (OID ${t.oid}) location`;
    roots.push({ path: dest, what, state: await target.inspect(dest), bytes: sum.bytes, files: sum.files });
  }
  return roots;
}

/** Links pg_tblspc/OID of the restored data directory to where each tablespace was restored. */
export async function linkTablespaces(
  target: RestoreTarget,
  path: string,
  info: BackupInfo,
  tablespaceDest: Map<number, string>,
): Promise<void> {
  if (info.tablespaces.length > 0) {
    await target.makeDir(join(path, 'pg_tblspc'), 0o700);
    for (const t of info.tablespaces) {
      const link = join(path, 'pg_tblspc', String(t.oid));
      await target.remove(link);
      await target.symlink(tablespaceDest.get(t.oid)!, link);
    }
  }
  // The links above are the truth; PostgreSQL would recreate them from tablespace_map.
  await target.remove(join(path, 'tablespace_map'));
}
