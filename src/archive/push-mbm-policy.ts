// Concept: which pushes map their segment into an MBM, and where they keep its copy (push-mbm.ts does the mapping).

import { join } from 'node:path';
import type { BartConfig, ServerConfig } from '../config/types.js';
import type { RepositoryStorage } from '../storage/storage.js';
import { parseArchiveFileName } from '../wal/segment-name.js';

/**
 * The local directory on the BART host where ARCHIVE-PUSH keeps a copy of each segment it stored
 * in an object store until its MBM is made: `backup_path/<server>/mbm-spool` (the same local
 * directory that holds the server's locks; one BART host owns a repository prefix).
 */
export function mbmSpoolDir(config: BartConfig, server: ServerConfig): string {
  return join(config.global.backupPath, server.name, 'mbm-spool');
}

/**
 * True when ARCHIVE-PUSH maps the segments it stores: the server takes incremental backups and
 * its archive is not a local directory (on POSIX, bart-scanner reads the archive directory itself,
 * as it always did, and the archive_command may be scp, which no ARCHIVE-PUSH sees).
 */
export function mapsAtPush(server: ServerConfig, archive: RepositoryStorage, name: string): boolean {
  return (
    server.allowIncrementalBackups &&
    archive.localPath('') === undefined &&
    parseArchiveFileName(name)?.kind === 'segment'
  );
}
