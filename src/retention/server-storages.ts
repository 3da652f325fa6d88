// Concept: a server's two storages (catalog and WAL archive), opened once for a retention command and closed after it.

import type { BartConfig, ServerConfig } from '../config/types.js';
import { serverCatalogDir } from '../catalog/layout.js';
import { openRepository, openWalArchive } from '../storage/open-repository.js';
import type { RepositoryStorage } from '../storage/storage.js';

/** The storages MANAGE, DELETE and SHOW-BACKUPS read and change for one server. */
export interface ServerStorages {
  /** The catalog: `<id>/…` backups, `<id>.partial` and `<id>.deleting` prefixes. */
  repo: RepositoryStorage;
  /** The WAL archive: segments, history, `.partial`, `.backup` and MBM files keyed by name. */
  archive: RepositoryStorage;
  /**
   * POSIX repositories: the directories behind `repo` and `archive`, for what only a file system
   * has (directory fsyncs after unlinks, the POSIX driver's temp files). Taken from the
   * configuration, not from `localPath`, which an encrypting wrapper hides.
   */
  localDirs?: { catalog: string; archive: string };
}

/** Opens a server's catalog and WAL archive storages (no request is made yet). */
export function openServerStorages(config: BartConfig, server: ServerConfig): ServerStorages {
  const storages: ServerStorages = { repo: openRepository(config, server), archive: openWalArchive(config, server) };
  if (server.repository.kind !== 's3')
    storages.localDirs = { catalog: serverCatalogDir(config, server), archive: server.archivePath };
  return storages;
}

/** Closes both storages (S3 sockets); never throws. */
export async function closeServerStorages(storages: ServerStorages): Promise<void> {
  await storages.repo.close().catch(() => undefined);
  await storages.archive.close().catch(() => undefined);
}

/** Runs `fn` with the server's storages and closes them afterwards (S3 sockets), whatever happens. */
export async function withServerStorages<T>(
  config: BartConfig,
  server: ServerConfig,
  fn: (storages: ServerStorages) => Promise<T>,
): Promise<T> {
  const storages = openServerStorages(config, server);
  try {
    return await fn(storages);
  } finally {
    await closeServerStorages(storages);
  }
}
