// Backup transaction: server facts, the publish of a backup (<id>.partial, then <id>) and archived-WAL waits shared by every backup.

import { phaseTimes } from '../util/phase-times.js';
import { existsSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, rm, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import type pg from 'pg';
import type { BartConfig, ServerConfig } from '../config/types.js';
import type { DataHost } from '../hosts/data-host.js';
import { dataHostFor } from '../hosts/host-for-server.js';
import { connect, queryValue } from '../postgres/connection.js';
import { serverVersion } from '../postgres/server-version.js';
import type { CompressionMethod } from '../storage/compression.js';
import { openRepository, openWalArchive } from '../storage/open-repository.js';
import { joinKey, type RepositoryStorage } from '../storage/storage.js';
import { crashPoint } from '../util/crash-point.js';
import { BartError, errorMessage, isErrnoError } from '../util/errors.js';
import { formatBytes } from '../util/format.js';
import { log } from '../util/log.js';
import {
  noWalRange,
  writeBackupInfo,
  type BackupInfo,
  type ChecksumAlgorithm,
  type TablespaceInfo,
} from '../catalog/backup-info.js';
import { acquireLock } from '../catalog/lock.js';
import { archiveNames, listBackups, type CatalogEntry } from '../catalog/catalog.js';
import { GZIP_SUFFIX, PARTIAL_SUFFIX, serverCatalogDir } from '../catalog/layout.js';
import { checkAbsolutePath, checkPrintable } from '../util/untrusted-path.js';
import { FencedStorage } from './fenced-storage.js';

/** What every kind of backup (native full, pg_basebackup, incremental) is asked for. */
export interface BackupRequest {
  format: 'tar' | 'plain';
  compression: CompressionMethod;
  level: number;
  checksum: ChecksumAlgorithm;
  threads: number;
  /** Expanded, validated backup name, if any. */
  name?: string;
  /** Recorded in backupinfo: native, pg_basebackup, ... */
  engine: string;
  /** Identifier of the parent backup (incremental backups). */
  parent?: string;
  /**
   * Verify the data checksums of the pages read (when the cluster has them); `false` is
   * `--no-verify-checksums`. Absent: verify.
   */
  verifyPages?: boolean;
}

/** Facts about the server read before the backup starts. */
export interface ServerFacts {
  major: number;
  versionNum: number;
  dataDirectory: string;
  walSegmentSize: number;
  systemIdentifier: string;
  /** pg_control's data_page_checksum_version: 0 = data checksums off. */
  dataChecksumVersion: number;
  tablespaces: TablespaceInfo[];
  estimatedBytes: number;
}

/** What the body of a backup works with; the transaction owns (and cleans up) all of it. */
export interface BackupContext {
  config: BartConfig;
  server: ServerConfig;
  request: BackupRequest;
  /** Open SQL session; backup mode started on it ends when it closes. */
  client: pg.Client;
  facts: ServerFacts;
  host: DataHost;
  id: string;
  /** The server's catalog storage, closed to writes when the backup is interrupted. */
  storage: RepositoryStorage;
  /**
   * The prefix every file of the backup goes under: `<id>.partial` when the storage renames it into
   * place at the end (POSIX), `<id>` when it cannot (S3; see {@link runBackupTransaction}).
   */
  dataKey: string;
  /** The server's WAL archive storage (archived segments the backup stores and waits for). */
  walArchive: RepositoryStorage;
  /**
   * {@link dataKey} as a directory of this host, when the storage is a local file system: the fast
   * paths (file-copy worker threads, directories with their modes, symlinks, pg_basebackup writing
   * in place). Absent on S3, where every write goes through {@link storage}.
   */
  localDir?: string;
  /**
   * Makes a private scratch directory on this host's disk (beside the server's lock, under
   * backup_path), for what must be a local directory whatever the storage (WAL streamed by
   * xlog_method = stream, pg_basebackup's output before its upload). Removed when the backup ends,
   * whatever the outcome (Ctrl-C/SIGTERM included).
   */
  scratchDir(what: string): Promise<string>;
  /** The backupinfo written at start (status "in progress"); the body returns the completed one. */
  info: BackupInfo;
  /** Complete backups of this server before this one. */
  existing: CatalogEntry[];
}

/** Reads and checks what a backup needs to know about the server. */
export async function readServerFacts(client: pg.Client, server: ServerConfig): Promise<ServerFacts> {
  const version = await serverVersion(client);
  const superuser = await queryValue(client, 'SELECT rolsuper FROM pg_roles WHERE rolname = current_user');
  if (superuser !== 'true')
    throw new BartError(
      `user "${server.user}" of server ${server.name} is not a superuser; bart needs a superuser with replication rights`,
    );
  const archiveMode = await queryValue(client, 'SHOW archive_mode');
  if (archiveMode === 'off' && server.xlogMethod === 'stream') {
    log.warning(
      `server ${server.name} has archive_mode = off: the backup streams its own WAL, but point-in-time recovery needs archived WAL (bart INIT -s ${server.name})`,
    );
  } else if (archiveMode === 'off') {
    throw new BartError(
      `server ${server.name} has archive_mode = off, so the WAL a backup needs cannot be fetched: run "bart INIT -s ${server.name}" and restart the server`,
    );
  }
  const tablespaces = await client.query<{ oid: string; spcname: string; location: string }>(
    "SELECT oid::text, spcname, pg_tablespace_location(oid) AS location FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid",
  );
  return {
    major: version.major,
    versionNum: version.num,
    dataDirectory: (await queryValue(client, 'SHOW data_directory'))!,
    walSegmentSize: Number(await queryValue(client, "SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")),
    systemIdentifier: (await queryValue(client, 'SELECT system_identifier::text FROM pg_control_system()'))!,
    dataChecksumVersion: Number(await queryValue(client, 'SELECT data_page_checksum_version FROM pg_control_init()')),
    tablespaces: tablespaces.rows.map((r) => checkedTablespace(r, server.name)),
    estimatedBytes: Number(
      await queryValue(client, 'SELECT sum(pg_database_size(oid))::bigint FROM pg_database WHERE datallowconn OR true'),
    ),
  };
}

/**
 * A tablespace as the server reports it, checked: its OID names a directory of the backup and its
 * location and name are written into backupinfo (one tab-separated line each) and restored to.
 */
function checkedTablespace(r: { oid: string; spcname: string; location: string }, serverName: string): TablespaceInfo {
  const origin = `pg_tablespace of server ${serverName}`;
  if (!/^[1-9]\d{0,9}$/.test(r.oid)) throw new BartError(`refusing tablespace OID "${r.oid}" from ${origin}`);
  const name = checkPrintable(r.spcname, `the name of tablespace ${r.oid}`, origin);
  return { oid: Number(r.oid), name, location: checkAbsolutePath(r.location, `${origin} (tablespace ${r.oid})`) };
}

/** Refuses to start when the catalog's file system clearly cannot hold the backup (POSIX storage only). */
async function checkFreeSpace(path: string, estimated: number, compression: CompressionMethod): Promise<void> {
  const fs = await statfs(path);
  const free = fs.bavail * fs.bsize;
  // Compressed size is unknown until written; assume at worst half for compressed backups.
  const needed = Math.ceil(estimated * (compression === 'none' ? 1 : 0.5)) + 64 * 1024 * 1024;
  if (free < needed) {
    throw new BartError(
      `not enough free space in ${path}: ${formatBytes(free)} available, about ${formatBytes(needed)} needed for a database of ${formatBytes(estimated)}`,
    );
  }
  if (free < estimated)
    log.warning(
      `free space in ${path} (${formatBytes(free)}) is less than the database size (${formatBytes(estimated)}); relying on compression`,
    );
}

/**
 * True unless `key` is a WAL segment still being copied: BART's `scp` archive_command writes in
 * place, so a segment shows up before it is whole. Its first page header records the segment size.
 */
async function segmentComplete(archive: RepositoryStorage, key: string, size: number): Promise<boolean> {
  if (!/^[0-9A-F]{24}$/.test(key)) return true;
  if (size < 40) return false;
  try {
    const chunks: Buffer[] = [];
    for await (const chunk of await archive.read(key, { start: 0, end: 40 })) chunks.push(chunk as Buffer);
    const head = Buffer.concat(chunks);
    return head.length >= 40 && size >= head.readUInt32LE(32);
  } catch {
    return false;
  }
}

/**
 * Waits until a WAL file is in the archive (plain or .gz), completely, and returns its key in the
 * WAL archive storage.
 */
export async function waitForArchivedWal(archive: RepositoryStorage, name: string, timeoutMs: number): Promise<string> {
  const started = Date.now();
  const deadline = started + timeoutMs;
  let warned = false;
  for (;;) {
    const plain = await archive.stat(name);
    if (plain !== undefined && (await segmentComplete(archive, name, plain.size))) return name;
    if ((await archive.stat(name + GZIP_SUFFIX)) !== undefined) return name + GZIP_SUFFIX;
    if (Date.now() > deadline) {
      throw new BartError(
        `WAL file ${name} needed by the backup did not arrive in ${archive.location} within ${timeoutMs / 1000} s; check archive_command (bart CHECK-CONFIG)`,
      );
    }
    if (!warned && Date.now() - started > 30_000) {
      warned = true;
      log.warning(
        `still waiting for WAL file ${name} to be archived into ${archive.location}; is archive_command working? (bart CHECK-CONFIG)`,
      );
    }
    // The archiver usually delivers a switched segment within milliseconds: poll briskly (a local
    // stat); an object store is asked less often.
    await new Promise((r) => setTimeout(r, archive.kind === 'posix' ? 25 : 200));
  }
}

/**
 * Unique backup identifier: epoch milliseconds, bumped while anything of the catalog (a backup, a
 * partial backup's marker, a deletion's tombstone: `<id>` or `<id>.<suffix>`) already has it.
 */
async function newBackupId(storage: RepositoryStorage): Promise<string> {
  const taken = new Set((await archiveNames(storage, '', true)).map((n) => n.replace(/\..*$/, '')));
  let id = Date.now();
  while (taken.has(String(id))) id++;
  return String(id);
}

/** How long an interrupted backup may take to remove what it wrote before the process exits anyway. */
const INTERRUPT_CLEANUP_MS = 20_000;

/**
 * Runs one backup as a transaction on the catalog: takes the server's backup lock (on this host),
 * connects, checks the server and (POSIX) the free space, records the backup as `in progress` in
 * `<id>.partial/backupinfo`, runs `body`, and only when the body has returned a complete backup
 * publishes it (the publish model of docs/object-storage.md):
 * - storage with atomic renames (POSIX): the files go under `<id>.partial/`, the final backupinfo is
 *   written there and `<id>.partial` renamed to `<id>`, as BART does;
 * - storage without (S3): the files go under `<id>/`, `<id>.partial/backupinfo` is only a marker,
 *   the final `<id>/backupinfo` is written last, after every file and the manifest are complete,
 *   and then the marker is removed (a stale marker loses to a complete backupinfo).
 * Any failure (or Ctrl-C/SIGTERM) removes both prefixes; a kill -9 leaves them, and the catalog
 * then shows the backup as failed (MANAGE -d removes it). Backup mode on the server ends with the
 * session in every case.
 */
export async function runBackupTransaction(
  config: BartConfig,
  server: ServerConfig,
  request: BackupRequest,
  body: (ctx: BackupContext) => Promise<BackupInfo>,
): Promise<BackupInfo> {
  const serverDir = serverCatalogDir(config, server);
  const repository = openRepository(config, server);
  const walArchive = openWalArchive(config, server);
  const storage = new FencedStorage(repository);
  if (walArchive.kind === 'posix' && !existsSync(server.archivePath)) {
    await repository.close();
    await walArchive.close();
    throw new BartError(
      `the archive directory ${server.archivePath} of server ${server.name} does not exist: run "bart INIT -s ${server.name}" first`,
    );
  }
  // The lock lives on this host's disk whatever the storage (one BART host owns a repository).
  await mkdir(serverDir, { recursive: true, mode: 0o700 });
  const lock = await acquireLock(serverDir, 'backup', 'BACKUP');
  let client: pg.Client | undefined;
  let host: DataHost | undefined;
  /** The prefixes this backup wrote and has not published yet (removed on failure). */
  let written: string[] = [];
  const removeWritten = async () => {
    await storage.fence();
    // The data before the marker: a marker without data is harmless, data without a marker is not.
    for (const prefix of [...written].reverse()) await repository.removePrefix(prefix);
    written = [];
  };
  /** Scratch directories on this host (see BackupContext.scratchDir). */
  const scratch: string[] = [];
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals) => {
    // Ctrl-C or kill: remove what we wrote; the server ends backup mode when our session closes.
    if (interrupted) return;
    interrupted = true;
    for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
    const localPaths = written.map((p) => repository.localPath(p));
    if (localPaths.every((p) => p !== undefined)) {
      // A local file system: removed at once, before anything else runs (as BART does).
      for (const p of localPaths) rmSync(p!, { recursive: true, force: true });
      rmSync(join(serverDir, 'backup.lock'), { force: true });
      log.error(`backup of server ${server.name} interrupted by ${signal}; nothing was kept`);
      process.exit(130);
    }
    // An object store cannot be cleaned synchronously: stop writing, remove, then exit, bounded in time.
    log.error(`backup of server ${server.name} interrupted by ${signal}; removing what it wrote`);
    const timer = setTimeout(() => {
      log.error(
        `backup of server ${server.name}: could not remove what it wrote within ${INTERRUPT_CLEANUP_MS / 1000} s; it is listed as failed until MANAGE -d removes it`,
      );
      rmSync(join(serverDir, 'backup.lock'), { force: true });
      process.exit(130);
    }, INTERRUPT_CLEANUP_MS);
    void removeWritten()
      .then(
        () => log.error(`backup of server ${server.name}: nothing was kept`),
        (err) =>
          log.error(
            `backup of server ${server.name}: could not remove what it wrote (${errorMessage(err)}); it is listed as failed until MANAGE -d removes it`,
          ),
      )
      .finally(() => {
        clearTimeout(timer);
        rmSync(join(serverDir, 'backup.lock'), { force: true });
        process.exit(130);
      });
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  // The catalog is read while the server is asked for its facts: on an object store a listing and a request per
  // backup, in an encrypted repository the key derivation too. Awaited below (a rejection is handled there).
  const existingBackups = listBackups(config, server, repository);
  existingBackups.catch(() => undefined);
  try {
    client = await connect({
      host: server.host,
      port: server.port,
      user: server.user,
      applicationName: 'pgbart backup',
    });
    const facts = await readServerFacts(client, server);
    host = await dataHostFor(server);
    // A file system can be full; an object store is not asked (it has no free space to report).
    if (repository.kind === 'posix') await checkFreeSpace(serverDir, facts.estimatedBytes, request.compression);

    const id = await newBackupId(repository);
    const existing = await existingBackups;
    if (request.name && existing.some((e) => e.info.name === request.name)) {
      throw new BartError(
        `backup name "${request.name}" is already used by another backup of server ${server.name}; names are unique per server`,
      );
    }
    const marker = id + PARTIAL_SUFFIX;
    const renames = repository.renamePrefix !== undefined;
    const dataKey = renames ? marker : id;
    const startTime = new Date(Number(id));
    const info: BackupInfo = {
      status: 'in progress',
      id,
      ...(request.name ? { name: request.name } : {}),
      ...(request.parent ? { parent: request.parent } : {}),
      location: joinKey(repository.location, id),
      sizeBytes: 0,
      dataBytes: 0,
      format: request.format,
      compression: request.compression,
      compressionLevel: request.level,
      timezone: Intl.DateTimeFormat().resolvedOptions().timeZone,
      xlogMethod: server.xlogMethod,
      checksumAlgorithm: request.checksum,
      artifactChecksums: [],
      tablespaces: facts.tablespaces,
      ...noWalRange(),
      serverVersionNum: facts.versionNum,
      systemIdentifier: facts.systemIdentifier,
      dataChecksumVersion: facts.dataChecksumVersion,
      walSegmentSize: facts.walSegmentSize,
      engine: request.engine,
      threadCount: request.threads,
      startTime,
      stopTime: startTime,
      pid: process.pid,
    };
    written = renames ? [marker] : [marker, id];
    await writeBackupInfo(storage, marker, info);
    log.info(`creating ${request.parent ? 'incremental ' : ''}backup for server '${server.name}'`);
    log.info(`backup identifier: '${id}'`);

    const localDir = repository.localPath(dataKey);
    const done = await body({
      config,
      server,
      request,
      client,
      facts,
      host,
      id,
      storage,
      dataKey,
      walArchive,
      ...(localDir !== undefined ? { localDir } : {}),
      scratchDir: async (what) => {
        const dir = await mkdtemp(join(serverDir, `.${id}.${what}-`));
        scratch.push(dir);
        return dir;
      },
      info,
      existing: existing.filter((e) => e.complete),
    });
    const final: BackupInfo = { ...done, status: 'active' };
    delete final.pid;
    // Every file durable before the backup becomes one (POSIX: one pass of fsyncs; S3: nothing to do).
    await phaseTimes.wait('fsync', storage.syncPrefix(dataKey));
    crashPoint('backup:before-publish');
    if (renames) {
      await writeBackupInfo(storage, marker, final);
      await storage.renamePrefix!(marker, id);
      written = [];
    } else {
      await writeBackupInfo(storage, id, final);
      written = [];
      // Published: a marker left by a failure here loses to the complete backupinfo (catalog.ts).
      await repository
        .removePrefix(marker)
        .catch((err) =>
          log.warning(
            `backup ${id} is complete, but its marker ${joinKey(repository.location, marker)} stayed: ${errorMessage(err)}`,
          ),
        );
    }
    return final;
  } catch (err) {
    if (interrupted) await new Promise(() => undefined); // the signal handler's cleanup exits the process
    await removeWritten().catch((cleanupErr) =>
      log.warning(`could not remove what the failed backup wrote: ${errorMessage(cleanupErr)}`),
    );
    if (isErrnoError(err) && err.code === 'ENOSPC')
      throw new BartError(
        `backup of server ${server.name} failed: no space left on device in ${repository.location}; nothing was kept`,
      );
    if (err instanceof BartError) throw err;
    throw new BartError(`backup of server ${server.name} failed: ${errorMessage(err)}`);
  } finally {
    for (const dir of scratch) await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await client?.end().catch(() => undefined);
    await host?.close();
    await lock.release();
    await repository.close();
    await walArchive.close();
  }
}
