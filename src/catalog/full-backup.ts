import { existsSync, rmSync } from 'node:fs';
import { mkdir, readFile, rename, rm, statfs, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import type pg from 'pg';
import type { BartConfig, ServerConfig } from '../config/types.js';
import type { DataHost, HostEntry } from '../hosts/data-host.js';
import { LocalHost } from '../hosts/local-host.js';
import { dataHostFor } from '../hosts/host-for-server.js';
import { BackupSession, parseBackupLabel } from '../postgres/backup-session.js';
import { connect, queryValue } from '../postgres/connection.js';
import { backupEntries } from '../postgres/data-directory.js';
import { serverVersion } from '../postgres/server-version.js';
import { compressionExtension, type CompressionMethod } from '../storage/compression.js';
import type { CompressTask } from '../storage/compress-worker.js';
import { PosixRepository } from '../storage/repository.js';
import { segmentName, segmentNumberFromName } from '../wal/segment-name.js';
import { BartError, errorMessage, isErrnoError } from '../util/errors.js';
import { formatBytes } from '../util/format.js';
import { fsyncDir } from '../util/fs-atomic.js';
import { log } from '../util/log.js';
import { parseLsn } from '../util/lsn.js';
import { Progress } from '../util/progress.js';
import { WorkerPool } from '../util/worker-pool.js';
import type { ArchiveWriter, ArchiveWriterSettings, UnitCompressor } from './archive-writer.js';
import { writeBackupInfo, type BackupInfo, type ChecksumAlgorithm, type TablespaceInfo } from './backup-info.js';
import { acquireLock } from './backup-lock.js';
import { listBackups } from './catalog.js';
import { backupDir, partialBackupDir, PLAIN_BASE_DIR, serverCatalogDir, tarName, MANIFEST_FILE } from './layout.js';
import { ManifestWriter, type ManifestFileEntry } from './manifest.js';
import { PgBackupManifestWriter } from './pg-backup-manifest.js';
import { PlainArchiveWriter } from './plain-archive-writer.js';
import { TarArchiveWriter } from './tar-archive-writer.js';

/** How to take a full backup (already validated by the command). */
export interface FullBackupOptions {
  format: 'tar' | 'plain';
  compression: CompressionMethod;
  level: number;
  checksum: ChecksumAlgorithm;
  threads: number;
  /** Expanded, validated backup name, if any. */
  name?: string;
}

/** Uncompressed bytes per compression unit: large enough to compress well, small enough to bound memory. */
const UNIT_SIZE = 1024 * 1024;

/** Facts about the server read before the backup starts. */
interface ServerFacts {
  major: number;
  versionNum: number;
  dataDirectory: string;
  walSegmentSize: number;
  systemIdentifier: string;
  tablespaces: TablespaceInfo[];
  estimatedBytes: number;
}

async function readServerFacts(client: pg.Client, server: ServerConfig): Promise<ServerFacts> {
  const version = await serverVersion(client);
  const superuser = await queryValue(client, 'SELECT rolsuper FROM pg_roles WHERE rolname = current_user');
  if (superuser !== 'true') throw new BartError(`user "${server.user}" of server ${server.name} is not a superuser; bart needs a superuser with replication rights`);
  const archiveMode = await queryValue(client, 'SHOW archive_mode');
  if (archiveMode === 'off') {
    throw new BartError(`server ${server.name} has archive_mode = off, so the WAL a backup needs cannot be fetched: run "bart INIT -s ${server.name}" and restart the server`);
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
    tablespaces: tablespaces.rows.map((r) => ({ oid: Number(r.oid), name: r.spcname, location: r.location })),
    estimatedBytes: Number(await queryValue(client, 'SELECT sum(pg_database_size(oid))::bigint FROM pg_database WHERE datallowconn OR true')),
  };
}

/** Refuses to start when the catalog's file system clearly cannot hold the backup. */
async function checkFreeSpace(path: string, estimated: number, compression: CompressionMethod): Promise<void> {
  const fs = await statfs(path);
  const free = fs.bavail * fs.bsize;
  // Compressed size is unknown until written; assume at worst half for compressed backups.
  const needed = Math.ceil(estimated * (compression === 'none' ? 1 : 0.5)) + 64 * 1024 * 1024;
  if (free < needed) {
    throw new BartError(`not enough free space in ${path}: ${formatBytes(free)} available, about ${formatBytes(needed)} needed for a database of ${formatBytes(estimated)}`);
  }
  if (free < estimated) log.warning(`free space in ${path} (${formatBytes(free)}) is less than the database size (${formatBytes(estimated)}); relying on compression`);
}

/** Waits until a WAL file is in the archive (plain or .gz) and returns its path. */
async function waitForArchivedWal(archivePath: string, name: string, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const candidate of [join(archivePath, name), join(archivePath, name + '.gz')]) {
      if (existsSync(candidate)) return candidate;
    }
    if (Date.now() > deadline) {
      throw new BartError(`WAL file ${name} needed by the backup did not arrive in ${archivePath} within ${timeoutMs / 1000} s; check archive_command (bart CHECK-CONFIG)`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Unique backup identifier: epoch milliseconds, bumped if a backup already has it. */
function newBackupId(config: BartConfig, server: ServerConfig): string {
  let id = Date.now();
  while (existsSync(backupDir(config, server, String(id))) || existsSync(partialBackupDir(config, server, String(id)))) id++;
  return String(id);
}

/**
 * Takes a full backup of one server with the native engine: non-exclusive backup mode held in one
 * session, the data directory and tablespaces copied through a {@link DataHost}, compressed by a
 * worker pool, the WAL from start to stop fetched from the archive into the backup, and the whole
 * written under `<id>.partial` until it is complete and durable.
 */
export async function takeFullBackup(config: BartConfig, server: ServerConfig, opts: FullBackupOptions): Promise<BackupInfo> {
  const serverDir = serverCatalogDir(config, server);
  if (!existsSync(server.archivePath)) {
    throw new BartError(`the archive directory ${server.archivePath} of server ${server.name} does not exist: run "bart INIT -s ${server.name}" first`);
  }
  await mkdir(serverDir, { recursive: true, mode: 0o700 });
  const lock = await acquireLock(serverDir, 'backup', 'BACKUP');
  let client: pg.Client | undefined;
  let pool: WorkerPool<Uint8Array> | undefined;
  let partialDir: string | undefined;
  let host: DataHost | undefined;
  const writers: ArchiveWriter[] = [];
  let manifest: ManifestWriter | undefined;
  let pgManifest: PgBackupManifestWriter | undefined;
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
    client = await connect({ host: server.host, port: server.port, user: server.user, applicationName: 'pgbart backup' });
    const facts = await readServerFacts(client, server);
    host = await dataHostFor(server);
    await checkFreeSpace(config.global.backupPath, facts.estimatedBytes, opts.compression);

    const id = newBackupId(config, server);
    const existing = await listBackups(config, server);
    if (opts.name && existing.some((e) => e.info.name === opts.name)) {
      throw new BartError(`backup name "${opts.name}" is already used by another backup of server ${server.name}; names are unique per server`);
    }
    partialDir = partialBackupDir(config, server, id);
    await mkdir(partialDir, { mode: 0o700 });
    const startTime = new Date(Number(id));
    const info: BackupInfo = {
      status: 'in progress',
      id,
      ...(opts.name ? { name: opts.name } : {}),
      location: backupDir(config, server, id),
      sizeBytes: 0,
      dataBytes: 0,
      format: opts.format,
      compression: opts.compression,
      compressionLevel: opts.level,
      timezone: Intl.DateTimeFormat().resolvedOptions().timeZone,
      xlogMethod: server.xlogMethod,
      checksumAlgorithm: opts.checksum,
      artifactChecksums: [],
      tablespaces: facts.tablespaces,
      timeline: 0,
      startWalFile: '',
      stopWalFile: '',
      startLsn: '',
      stopLsn: '',
      checkpointLsn: '',
      walFiles: [],
      walBytes: 0,
      serverVersionNum: facts.versionNum,
      systemIdentifier: facts.systemIdentifier,
      walSegmentSize: facts.walSegmentSize,
      engine: 'native',
      threadCount: opts.threads,
      startTime,
      stopTime: startTime,
      pid: process.pid,
    };
    await writeBackupInfo(partialDir, info);
    log.info(`creating backup for server '${server.name}'`);
    log.info(`backup identifier: '${id}'`);

    if (opts.compression !== 'none') pool = new WorkerPool<Uint8Array>(new URL('../storage/compress-worker.js', import.meta.url), opts.threads);
    const compress: UnitCompressor = pool
      ? async (unit) => {
          const copy = new Uint8Array(unit.length);
          copy.set(unit);
          const task: CompressTask = { method: opts.compression, level: opts.level, data: copy };
          return Buffer.from(await pool!.run(task, [copy.buffer]));
        }
      : async (unit) => unit;
    const settings: ArchiveWriterSettings = {
      compression: opts.compression,
      checksum: opts.checksum,
      compress,
      maxInFlight: Math.max(2, opts.threads * 2),
      unitSize: opts.format === 'tar' ? UNIT_SIZE : 4 * UNIT_SIZE,
    };
    manifest = await ManifestWriter.create(join(partialDir, MANIFEST_FILE), {
      manifest: 'pgbart', version: 1, server: server.name, id, format: opts.format, compression: opts.compression, checksumAlgorithm: opts.checksum,
    });
    const repository = new PosixRepository();
    const progress = new Progress(`backup ${server.name}`, facts.estimatedBytes);
    // Manifest lines are appended one at a time even when plain writers finish files concurrently.
    let sinkChain: Promise<void> = Promise.resolve();
    const sinkFor = (archive: string) => (entry: ManifestFileEntry) => {
      progress.add(entry.size);
      sinkChain = sinkChain.then(async () => {
        await manifest!.addFile(entry);
        if (pgManifest && entry.type === 'file') {
          const path = archive === 'base' ? entry.path : `pg_tblspc/${archive}/${entry.path}`;
          await pgManifest.addFile(path, entry.size, entry.mtime, entry.checksum);
        }
      });
      return sinkChain;
    };
    const ext = compressionExtension(opts.compression);
    const makeWriter = async (archive: string): Promise<ArchiveWriter> => {
      const writer = opts.format === 'tar'
        ? new TarArchiveWriter(tarName(archive, ext), archive, await repository.createOutput(join(partialDir!, tarName(archive, ext))), settings, sinkFor(archive))
        : new PlainArchiveWriter(join(partialDir!, archive === 'base' ? PLAIN_BASE_DIR : archive), archive, repository, settings, sinkFor(archive));
      writers.push(writer);
      return writer;
    };
    if (opts.format === 'plain' && opts.compression === 'none') {
      await mkdir(join(partialDir, PLAIN_BASE_DIR), { mode: 0o700 });
      pgManifest = await PgBackupManifestWriter.create(join(partialDir, PLAIN_BASE_DIR, 'backup_manifest'), opts.checksum);
    }

    const { session, startLsn } = await BackupSession.start(client, facts.major, `pgbart backup ${id}`);
    log.debug(`backup mode started at ${startLsn}`);
    const base = await makeWriter('base');
    await copyTree(host, facts.dataDirectory, base, opts, false);
    for (const ts of facts.tablespaces) {
      const writer = await makeWriter(String(ts.oid));
      await copyTree(host, ts.location, writer, opts, true);
      if (opts.format === 'plain') await symlink(`../../${ts.oid}`, join(partialDir, PLAIN_BASE_DIR, 'pg_tblspc', String(ts.oid)));
    }
    const stop = await session.stop();
    const label = parseBackupLabel(stop.labelFile);
    const now = Date.now();
    const made = (path: string, data: string): [HostEntry, { data: Buffer }] => [
      { path, type: 'file', size: Buffer.byteLength(data), mode: 0o600, mtimeMs: now },
      { data: Buffer.from(data) },
    ];
    await base.add(...made('backup_label', stop.labelFile));
    if (stop.tablespaceMap !== '') await base.add(...made('tablespace_map', stop.tablespaceMap));

    // The WAL from start to stop makes the backup consistent on its own.
    const segSize = facts.walSegmentSize;
    const stopLsn = parseLsn(stop.stopLsn);
    const lastSegNo = (stopLsn - 1n) / BigInt(segSize);
    const firstSegNo = segmentNumberFromName(label.startWalFile, segSize);
    const stopWalFile = segmentName(label.timeline, lastSegNo, segSize);
    const walFiles: string[] = [];
    let walBytes = 0;
    const walWriterHost = new LocalHost();
    const walNames: string[] = [];
    if (label.timeline > 1) {
      const history = `${label.timeline.toString(16).toUpperCase().padStart(8, '0')}.history`;
      if (existsSync(join(server.archivePath, history))) walNames.push(history);
    }
    for (let seg = firstSegNo; seg <= lastSegNo; seg++) walNames.push(segmentName(label.timeline, seg, segSize));
    for (const name of walNames) {
      const path = await waitForArchivedWal(server.archivePath, name, 60_000);
      const entryPath = `pg_wal/${name}`;
      if (path.endsWith('.gz')) {
        const data = gunzipSync(await readFile(path));
        await base.add({ path: entryPath, type: 'file', size: data.length, mode: 0o600, mtimeMs: now }, { data });
        walBytes += data.length;
      } else {
        const size = (await (await import('node:fs/promises')).stat(path)).size;
        await base.add({ path: entryPath, type: 'file', size, mode: 0o600, mtimeMs: now }, { host: walWriterHost, path });
        walBytes += size;
      }
      if (!name.endsWith('.history')) walFiles.push(name);
    }

    let storedBytes = 0;
    let dataBytes = 0;
    for (const writer of writers) {
      const result = await writer.finish();
      storedBytes += result.storedBytes;
      dataBytes += result.dataBytes;
      if (result.artifact) {
        await manifest.addArtifact(result.artifact);
        info.artifactChecksums.push({ file: result.artifact.artifact, checksum: result.artifact.checksum });
      }
    }
    writers.length = 0;
    await sinkChain;
    const stopTime = new Date();
    const done: BackupInfo = {
      ...info,
      status: 'active',
      sizeBytes: storedBytes,
      dataBytes,
      timeline: label.timeline,
      startWalFile: label.startWalFile,
      stopWalFile,
      startLsn: label.startLsn,
      stopLsn: stop.stopLsn,
      checkpointLsn: label.checkpointLsn,
      walFiles,
      walBytes,
      stopTime,
    };
    delete done.pid;
    const { status: _status, ...recorded } = done;
    await manifest.addInfo({ ...recorded, startTime: done.startTime.toISOString(), stopTime: done.stopTime.toISOString() });
    await manifest.finish();
    manifest = undefined;
    if (pgManifest) {
      await pgManifest.finish(label.timeline, label.startLsn, stop.stopLsn);
      pgManifest = undefined;
    }
    if (opts.format === 'plain') await repository.syncTree(partialDir);
    progress.end();
    await writeBackupInfo(partialDir, done);
    const finalDir = backupDir(config, server, id);
    await rename(partialDir, finalDir);
    partialDir = undefined;
    await fsyncDir(serverDir);
    return done;
  } catch (err) {
    for (const w of writers) await w.abort().catch(() => undefined);
    await manifest?.abandon();
    await pgManifest?.abort();
    if (partialDir) await rm(partialDir, { recursive: true, force: true }).catch(() => undefined);
    if (err instanceof BartError) throw err;
    if (isErrnoError(err) && err.code === 'ENOSPC') throw new BartError(`backup of server ${server.name} failed: no space left on device in ${config.global.backupPath}; nothing was kept`);
    throw new BartError(`backup of server ${server.name} failed: ${errorMessage(err)}`);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await pool?.close();
    await client?.end().catch(() => undefined);
    await host?.close();
    await lock.release();
  }
}

/** Copies a data directory or tablespace through an archive writer (files in parallel for plain). */
async function copyTree(host: DataHost, root: string, writer: ArchiveWriter, opts: FullBackupOptions, isTablespace: boolean): Promise<void> {
  const running = new Set<Promise<void>>();
  const parallel = opts.format === 'plain' ? opts.threads * 2 : 1;
  let failure: unknown;
  for await (const raw of backupEntries(host.walk(root), isTablespace)) {
    // pg_wal may be a symlink to another disk (initdb -X); in the backup it is a directory.
    const entry: HostEntry = raw.type === 'symlink' && raw.path === 'pg_wal' ? { ...raw, type: 'dir', size: 0 } : raw;
    const task = writer.add(entry, entry.type === 'file' ? { host, path: join(root, entry.path) } : undefined);
    if (parallel === 1) {
      await task;
      continue;
    }
    const tracked: Promise<void> = task.catch((err) => {
      failure ??= err;
    }).finally(() => running.delete(tracked));
    running.add(tracked);
    if (running.size >= parallel) await Promise.race(running);
    if (failure) break;
  }
  await Promise.all(running);
  if (failure) throw failure;
}
