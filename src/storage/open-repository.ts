// Concept: opening a server's repository — which driver and root bart.cfg gives a server's catalog and WAL archive.

import { join } from 'node:path';
import type { BartConfig, S3RepositoryConfig, ServerConfig } from '../config/types.js';
import { CipherStorage } from './encryption/cipher-storage.js';
import { readPassphrase } from './encryption/passphrase.js';
import { PlainRepositoryGuard } from './encryption/plain-guard.js';
import { PosixStorage } from './posix/posix-storage.js';
import type { S3StorageOptions } from './s3/s3-client.js';
import { S3Storage } from './s3/s3-storage.js';
import { joinKey, type RepositoryStorage } from './storage.js';

/**
 * The storage of a server's catalog: its backups (`<id>/…`) and whatever else lives beside them.
 * POSIX: `backup_path/<server>`. S3: `s3://<s3_bucket>/<s3_prefix>/<server>`.
 */
export function openRepository(config: BartConfig, server: ServerConfig): RepositoryStorage {
  return withCipher(server, openRepositoryDriver(config, server), () => openWalArchiveDriver(server));
}

/**
 * The driver under a server's catalog, without encryption or its guard: stored bytes as they are (SHOW-SERVERS'
 * disk usage). Every other use goes through {@link openRepository}.
 */
export function openRepositoryDriver(config: BartConfig, server: ServerConfig): RepositoryStorage {
  if (server.repository.kind === 's3') return new S3Storage(s3Options(server.repository, server.name));
  return new PosixStorage(join(config.global.backupPath, server.name));
}

/**
 * The storage as the server's repository_cipher wants it: encrypted on this host before the driver stores it,
 * or guarded against being an encrypted repository read without its key (docs/catalog-format.md).
 */
function withCipher(
  server: ServerConfig,
  inner: RepositoryStorage,
  sibling: () => RepositoryStorage,
): RepositoryStorage {
  if (server.repositoryCipher === 'none') return new PlainRepositoryGuard(inner);
  const passFile = server.repositoryCipherPassFile;
  return new CipherStorage(inner, {
    cipher: server.repositoryCipher,
    passphrase: () => readPassphrase(passFile),
    // The catalog and the WAL archive share one salt when the second is created (one scrypt per command).
    sibling,
  });
}

/**
 * The storage of a server's WAL archive: archived segments, history files, `.partial` files, MBMs,
 * keyed by file name. POSIX: the server's archive_path (by default `backup_path/<server>/archived_wals`).
 * S3: `s3://<s3_bucket>/<s3_prefix>/<server>/archived_wals` (archive_path is not used for storage).
 */
export function openWalArchive(config: BartConfig, server: ServerConfig): RepositoryStorage {
  return withCipher(server, openWalArchiveDriver(server), () => openRepositoryDriver(config, server));
}

/** The driver under a server's WAL archive, without encryption (see {@link openRepositoryDriver}). */
export function openWalArchiveDriver(server: ServerConfig): RepositoryStorage {
  if (server.repository.kind === 's3')
    return new S3Storage(s3Options(server.repository, joinKey(server.name, 'archived_wals')));
  return new PosixStorage(server.archivePath);
}

/** Where a server's S3 repository is, for people: `s3://bucket/prefix/server`, or its catalog directory. */
export function repositoryLocation(config: BartConfig, server: ServerConfig): string {
  const repo = server.repository;
  if (repo.kind === 's3') return `s3://${joinKey(repo.bucket, repo.prefix, server.name)}`;
  return join(config.global.backupPath, server.name);
}

/**
 * The bucket [BART] names, rooted at its s3_prefix (no server below), when [BART] says
 * `repository = s3` and gives s3_bucket; else undefined. For CHECK-CONFIG of [BART]: a bucket
 * checked before any server is set up.
 */
export function openGlobalS3Repository(config: BartConfig): RepositoryStorage | undefined {
  const repo = config.global.s3Repository;
  return repo === undefined ? undefined : new S3Storage(s3Options(repo, ''));
}

/** The driver settings of a server's S3 repository, rooted at `<s3_prefix>/<below>`. */
function s3Options(repo: S3RepositoryConfig, below: string): S3StorageOptions {
  return {
    bucket: repo.bucket,
    root: joinKey(repo.prefix, below),
    ...(repo.endpoint !== undefined ? { endpoint: repo.endpoint } : {}),
    region: repo.region,
    forcePathStyle: repo.uriStyle === 'path',
    verifyTls: repo.verifyTls,
    ...(repo.caFile !== undefined ? { caFile: repo.caFile } : {}),
    ...(repo.credentials !== undefined ? { credentials: repo.credentials } : {}),
  };
}
