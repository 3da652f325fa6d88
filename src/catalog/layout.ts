// Catalog layout: where a server's catalog, its backup directories and their files live.

import { join } from 'node:path';
import type { BartConfig, ServerConfig } from '../config/types.js';

/** Suffix of a backup directory still being written (or left by a crash). */
export const PARTIAL_SUFFIX = '.partial';

/**
 * Suffix of a backup being deleted. POSIX: the backup directory renamed (atomically) just before it
 * is removed. A storage without atomic renames (S3): the prefix of the backup's tombstone object
 * `<id>.deleting/marker`, written before anything of the backup is removed; while it exists, `<id>`
 * is no backup (retention/obsolete.ts).
 */
export const DELETING_SUFFIX = '.deleting';

/** The tombstone object below `<id>.deleting` on a storage without atomic renames. */
export const TOMBSTONE_FILE = 'marker';

/** File names inside a backup directory. */
export const BACKUPINFO_FILE = 'backupinfo';
export const MANIFEST_FILE = 'manifest.jsonl';
/** In plain backups: the data directory copy. In tar backups: `base.tar[.ext]`. */
export const PLAIN_BASE_DIR = 'base';

/** Suffix of WAL files that MANAGE compressed (wal_compression = enabled). */
export const GZIP_SUFFIX = '.gz';

/** `backup_path/<server>`: everything the catalog holds for one server. */
export function serverCatalogDir(config: BartConfig, server: ServerConfig): string {
  return join(config.global.backupPath, server.name);
}

/** Directory of a completed backup. */
export function backupDir(config: BartConfig, server: ServerConfig, id: string): string {
  return join(serverCatalogDir(config, server), id);
}

/** Directory of a backup being written. */
export function partialBackupDir(config: BartConfig, server: ServerConfig, id: string): string {
  return join(serverCatalogDir(config, server), id + PARTIAL_SUFFIX);
}

/** Name of a tar archive inside a backup: `base` or a tablespace OID, plus `.tar` and the compression suffix. */
export function tarName(archive: string, extension: string): string {
  return `${archive}.tar${extension}`;
}
