// PostgreSQL data directory: what a base backup leaves out, unlogged relations and temp files included.

import type { HostEntry } from '../hosts/data-host.js';

/**
 * What PostgreSQL says a base backup leaves out (src/backend/backup/basebackup.c): the contents of
 * these top-level directories are rebuilt at startup or are useless to a restored cluster, but the
 * directories themselves must exist.
 */
const CONTENTS_EXCLUDED = new Set([
  'pg_wal',
  'pg_dynshmem',
  'pg_notify',
  'pg_replslot',
  'pg_serial',
  'pg_snapshots',
  'pg_stat_tmp',
  'pg_subtrans',
]);

/** Top-level files never copied: the backup writes its own backup_label/tablespace_map from pg_backup_stop. */
const TOP_LEVEL_FILES_EXCLUDED = new Set([
  'postmaster.pid',
  'postmaster.opts',
  'backup_label',
  'tablespace_map',
  'backup_manifest',
  'backup_label.old',
  'postgresql.auto.conf.tmp',
  'current_logfiles.tmp',
]);

/** Files excluded wherever they are. */
const ANYWHERE_FILES_EXCLUDED = new Set(['pg_internal.init']);

/** True for temporary files and directories (`pgsql_tmp*`), which are never backed up. */
function isTemp(name: string): boolean {
  return name.startsWith('pgsql_tmp');
}

/**
 * Whether an entry of the data directory (path relative to it) belongs in a backup. Symlinks in
 * pg_tblspc are left out here: tablespaces are archived separately and relinked on restore.
 */
export function includeInBackup(entry: HostEntry): boolean {
  const parts = entry.path.split('/');
  const name = parts[parts.length - 1]!;
  if (isTemp(name) || parts.some(isTemp)) return false;
  if (parts.length === 1) {
    if (entry.type !== 'dir' && TOP_LEVEL_FILES_EXCLUDED.has(name)) return false;
  } else {
    const top = parts[0]!;
    // pg_wal/archive_status is the one subdirectory of pg_wal PostgreSQL expects to find.
    if (
      CONTENTS_EXCLUDED.has(top) &&
      !(top === 'pg_wal' && parts.length === 2 && name === 'archive_status' && entry.type === 'dir')
    )
      return false;
    if (top === 'pg_tblspc' && parts.length === 2) return false;
  }
  if (entry.type === 'file' && ANYWHERE_FILES_EXCLUDED.has(name)) return false;
  return true;
}

const RELATION_FILE = /^(\d+)(?:_(fsm|vm|init))?(?:\.(\d+))?$/;

/**
 * Drops the files of unlogged relations except their init fork: they are reset from the init fork
 * at recovery, so copying them is wasted work (PostgreSQL does the same). `entries` are the files of
 * one database directory.
 */
export function withoutUnloggedRelations(entries: HostEntry[]): HostEntry[] {
  const unlogged = new Set<string>();
  for (const e of entries) {
    const m = RELATION_FILE.exec(e.path.slice(e.path.lastIndexOf('/') + 1));
    if (m && m[2] === 'init') unlogged.add(m[1]!);
  }
  if (unlogged.size === 0) return entries;
  return entries.filter((e) => {
    const m = RELATION_FILE.exec(e.path.slice(e.path.lastIndexOf('/') + 1));
    return !m || !unlogged.has(m[1]!) || m[2] === 'init';
  });
}

/**
 * True for directories whose files are relations of one database: `base/<dboid>` and, inside a
 * tablespace, `PG_<ver>_<catver>/<dboid>`.
 */
export function isDatabaseDirectory(path: string): boolean {
  return /^(base|PG_[^/]+)\/\d+$/.test(path) || /^pg_tblspc\/\d+\/PG_[^/]+\/\d+$/.test(path);
}

/**
 * Applies every exclusion to a walk of a data directory (or tablespace), streaming: the files of
 * each database directory are gathered so unlogged relations can be recognised.
 */
export async function* backupEntries(walk: AsyncIterable<HostEntry>, isTablespace: boolean): AsyncGenerator<HostEntry> {
  let dbDir: string | undefined;
  let pending: HostEntry[] = [];
  const flush = function* () {
    yield* withoutUnloggedRelations(pending);
    pending = [];
    dbDir = undefined;
  };
  for await (const entry of walk) {
    if (!isTablespace && !includeInBackup(entry)) continue;
    if (isTablespace && entry.path.split('/').some(isTemp)) continue;
    const parent = entry.path.slice(0, Math.max(0, entry.path.lastIndexOf('/')));
    if (dbDir !== undefined && parent !== dbDir) yield* flush();
    if (entry.type === 'file' && isDatabaseDirectory(parent)) {
      dbDir = parent;
      pending.push(entry);
      continue;
    }
    yield entry;
  }
  yield* flush();
}
