// Backup transaction: server facts, the <id>.partial lifecycle and archived-WAL waits shared by every backup.

import { PosixStorage } from '../storage/posix/posix-storage.js';
import { existsSync, rmSync } from 'node:fs';
import { mkdir, open, rename, rm, statfs } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type pg from 'pg';
import type { BartConfig, ServerConfig } from '../config/types.js';
import type { DataHost } from '../hosts/data-host.js';
import { dataHostFor } from '../hosts/host-for-server.js';
import { connect, queryValue } from '../postgres/connection.js';
import { serverVersion } from '../postgres/server-version.js';
import type { CompressionMethod } from '../storage/compression.js';
import { BartError, errorMessage, isErrnoError } from '../util/errors.js';
import { formatBytes } from '../util/format.js';
import { fsyncDir } from '../util/fs-atomic.js';
import { log } from '../util/log.js';
import {
  noWalRange,
  writeBackupInfo,
  type BackupInfo,
  type ChecksumAlgorithm,
  type TablespaceInfo,
} from '../catalog/backup-info.js';
import { acquireLock } from '../catalog/lock.js';
import { listBackups, type CatalogEntry } from '../catalog/catalog.js';
import { backupDir, partialBackupDir, serverCatalogDir } from '../catalog/layout.js';
import { checkAbsolutePath, checkPrintable } from '../util/untrusted-path.js';

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
  /** `<id>.partial`: everything the body writes goes here. */
  partialDir: string;
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

/** Refuses to start when the catalog's file system clearly cannot hold the backup. */
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
 * True unless `path` is a WAL segment still being copied: BART's `scp` archive_command writes in
 * place, so a segment shows up before it is whole. Its first page header records the segment size.
 */
async function segmentComplete(path: string, name: string): Promise<boolean> {
  if (!/^[0-9A-F]{24}$/.test(name)) return true;
  let handle;
  try {
    handle = await open(path, 'r');
    const head = Buffer.alloc(40);
    const { bytesRead } = await handle.read(head, 0, 40, 0);
    if (bytesRead < 40) return false;
    return (await handle.stat()).size >= head.readUInt32LE(32);
  } catch {
    return false;
  } finally {
    await handle?.close();
  }
}

/** Waits until a WAL file is in the archive (plain or .gz), completely, and returns its path. */
export async function waitForArchivedWal(archivePath: string, name: string, timeoutMs: number): Promise<string> {
  const started = Date.now();
  const deadline = started + timeoutMs;
  let warned = false;
  for (;;) {
    if (existsSync(join(archivePath, name)) && (await segmentComplete(join(archivePath, name), name)))
      return join(archivePath, name);
    if (existsSync(join(archivePath, name + '.gz'))) return join(archivePath, name + '.gz');
    if (Date.now() > deadline) {
      throw new BartError(
        `WAL file ${name} needed by the backup did not arrive in ${archivePath} within ${timeoutMs / 1000} s; check archive_command (bart CHECK-CONFIG)`,
      );
    }
    if (!warned && Date.now() - started > 30_000) {
      warned = true;
      log.warning(
        `still waiting for WAL file ${name} to be archived into ${archivePath}; is archive_command working? (bart CHECK-CONFIG)`,
      );
    }
    // The archiver usually delivers a switched segment within milliseconds: poll briskly.
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Unique backup identifier: epoch milliseconds, bumped if a backup already has it. */
function newBackupId(config: BartConfig, server: ServerConfig): string {
  let id = Date.now();
  while (existsSync(backupDir(config, server, String(id))) || existsSync(partialBackupDir(config, server, String(id))))
    id++;
  return String(id);
}

/**
 * Runs one backup as a transaction on the catalog: takes the server's backup lock, connects,
 * checks the server and the free space, creates `<id>.partial` with an "in progress" backupinfo,
 * runs `body`, and only when the body has returned a complete backup writes the final backupinfo
 * and renames the directory to `<id>`. Any failure (or Ctrl-C/SIGTERM) removes the partial
 * directory; a kill -9 leaves it, and the catalog then shows it as failed. Backup mode on the server
 * ends with the session in every case.
 */
export async function runBackupTransaction(
  config: BartConfig,
  server: ServerConfig,
  request: BackupRequest,
  body: (ctx: BackupContext) => Promise<BackupInfo>,
): Promise<BackupInfo> {
  const serverDir = serverCatalogDir(config, server);
  if (!existsSync(server.archivePath)) {
    throw new BartError(
      `the archive directory ${server.archivePath} of server ${server.name} does not exist: run "bart INIT -s ${server.name}" first`,
    );
  }
  await mkdir(serverDir, { recursive: true, mode: 0o700 });
  const storage = new PosixStorage(serverDir); // POSIX shim: migrate
  const lock = await acquireLock(serverDir, 'backup', 'BACKUP');
  let client: pg.Client | undefined;
  let partialDir: string | undefined;
  let host: DataHost | undefined;
  const onSignal = (signal: NodeJS.Signals) => {
    // Ctrl-C or kill: remove what we wrote; the server ends backup mode when our session closes.
    if (partialDir) rmSync(partialDir, { recursive: true, force: true });
    rmSync(join(serverDir, 'backup.lock'), { force: true });
    log.error(`backup of server ${server.name} interrupted by ${signal}; nothing was kept`);
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    client = await connect({
      host: server.host,
      port: server.port,
      user: server.user,
      applicationName: 'pgbart backup',
    });
    const facts = await readServerFacts(client, server);
    host = await dataHostFor(server);
    await checkFreeSpace(config.global.backupPath, facts.estimatedBytes, request.compression);

    const id = newBackupId(config, server);
    const existing = await listBackups(config, server);
    if (request.name && existing.some((e) => e.info.name === request.name)) {
      throw new BartError(
        `backup name "${request.name}" is already used by another backup of server ${server.name}; names are unique per server`,
      );
    }
    partialDir = partialBackupDir(config, server, id);
    await mkdir(partialDir, { mode: 0o700 });
    const startTime = new Date(Number(id));
    const info: BackupInfo = {
      status: 'in progress',
      id,
      ...(request.name ? { name: request.name } : {}),
      ...(request.parent ? { parent: request.parent } : {}),
      location: backupDir(config, server, id),
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
    await writeBackupInfo(storage, basename(partialDir), info); // POSIX shim: migrate
    log.info(`creating ${request.parent ? 'incremental ' : ''}backup for server '${server.name}'`);
    log.info(`backup identifier: '${id}'`);

    const done = await body({
      config,
      server,
      request,
      client,
      facts,
      host,
      id,
      partialDir,
      info,
      existing: existing.filter((e) => e.complete),
    });
    const final: BackupInfo = { ...done, status: 'active' };
    delete final.pid;
    await writeBackupInfo(storage, basename(partialDir), final); // POSIX shim: migrate
    await rename(partialDir, backupDir(config, server, id));
    partialDir = undefined;
    await fsyncDir(serverDir);
    return final;
  } catch (err) {
    if (partialDir) await rm(partialDir, { recursive: true, force: true }).catch(() => undefined);
    if (err instanceof BartError) throw err;
    if (isErrnoError(err) && err.code === 'ENOSPC')
      throw new BartError(
        `backup of server ${server.name} failed: no space left on device in ${config.global.backupPath}; nothing was kept`,
      );
    throw new BartError(`backup of server ${server.name} failed: ${errorMessage(err)}`);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await client?.end().catch(() => undefined);
    await host?.close();
    await lock.release();
  }
}
