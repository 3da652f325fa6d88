// Concept: opening a server's repository — which driver and root bart.cfg gives a server's catalog and WAL archive.

import { join } from 'node:path';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { PosixStorage } from './posix/posix-storage.js';
import type { RepositoryStorage } from './storage.js';

/**
 * The storage of a server's catalog: its backups (`<id>/…`) and whatever else lives beside them.
 * POSIX: `backup_path/<server>`.
 */
export function openRepository(config: BartConfig, server: ServerConfig): RepositoryStorage {
  return new PosixStorage(join(config.global.backupPath, server.name));
}

/**
 * The storage of a server's WAL archive: archived segments, history files, `.partial` files, MBMs,
 * keyed by file name. POSIX: the server's archive_path (by default `backup_path/<server>/archived_wals`).
 */
export function openWalArchive(config: BartConfig, server: ServerConfig): RepositoryStorage {
  void config;
  return new PosixStorage(server.archivePath);
}
