// Backup engine: a full backup of a data directory and its tablespaces with the native engine.

import { mkdir, rm, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { BartConfig, ServerConfig } from '../config/types.js';
import type { DataHost, HostEntry } from '../hosts/data-host.js';
import { checkedWalk } from '../hosts/checked-walk.js';
import { BackupSession } from '../postgres/backup-session.js';
import { backupEntries } from '../postgres/data-directory.js';
import { WalStreamer } from '../postgres/wal-streamer.js';
import { log } from '../util/log.js';
import { phaseTimes } from '../util/phase-times.js';
import { parseLsn } from '../util/lsn.js';
import { Progress } from '../util/progress.js';
import type { ArchiveWriter, EntryContent } from './archive-writer.js';
import { addStopFiles, storeBackupWal } from './finish.js';
import type { BackupInfo } from '../catalog/backup-info.js';
import { runBackupTransaction, type BackupContext, type BackupRequest } from './transaction.js';
import { PLAIN_BASE_DIR } from '../catalog/layout.js';
import type { ManifestFileEntry } from '../catalog/manifest.js';
import { PgBackupManifestWriter } from './pg-backup-manifest.js';
import { pageCheckerFor, recordPageChecks, type PageChecker } from './page-check.js';
import { BackupOutputs, WriterCalls } from './engine-outputs.js';
import { joinKey } from '../storage/storage.js';

/** How to take a full backup (already validated by the command). */
export type FullBackupOptions = Omit<BackupRequest, 'engine' | 'parent'>;

/**
 * Where xlog_method = stream writes WAL before it goes into pg_wal/: inside the partial backup on a
 * local file system, else in a scratch directory on this host (BackupContext.scratchDir).
 */
const STREAM_DIR = 'wal-stream';

/**
 * Takes a full backup of one server with the native engine: non-exclusive backup mode held in one
 * session, the data directory and tablespaces copied through a {@link DataHost}, compressed by a
 * worker pool, the WAL from start to stop fetched from the archive into the backup; the whole is
 * written under the backup's data prefix and published once complete and durable (see runBackupTransaction).
 */
export async function takeFullBackup(
  config: BartConfig,
  server: ServerConfig,
  opts: FullBackupOptions,
): Promise<BackupInfo> {
  return runBackupTransaction(config, server, { ...opts, engine: 'native' }, nativeFullBackup);
}

/** The native engine's work inside a backup transaction. */
async function nativeFullBackup(ctx: BackupContext): Promise<BackupInfo> {
  const { server, request, client, facts, host, id, storage, dataKey, localDir, info } = ctx;
  let outputs: BackupOutputs | undefined;
  let pgManifest: PgBackupManifestWriter | undefined;
  let streamer: WalStreamer | undefined;
  let streamDir: string | undefined;
  try {
    outputs = await BackupOutputs.open(ctx, { fileCopyWorkers: true });
    const { manifest } = outputs;
    const progress = new Progress(`backup ${server.name}`, facts.estimatedBytes);
    // Manifest lines are appended one at a time even when plain writers finish files concurrently.
    let sinkChain: Promise<void> = Promise.resolve();
    const sinkFor = (archive: string) => (entry: ManifestFileEntry) => {
      progress.add(entry.size);
      sinkChain = sinkChain.then(async () => {
        await manifest.addFile(entry);
        if (pgManifest && entry.type === 'file') {
          const path = archive === 'base' ? entry.path : `pg_tblspc/${archive}/${entry.path}`;
          await pgManifest.addFile(path, entry.size, entry.mtime, entry.checksum);
        }
      });
      return sinkChain;
    };
    const makeWriter = (archive: string) => outputs!.makeWriter(archive, sinkFor(archive));
    if (request.format === 'plain' && request.compression === 'none') {
      if (localDir !== undefined) await mkdir(join(localDir, PLAIN_BASE_DIR), { mode: 0o700 });
      pgManifest = await PgBackupManifestWriter.create(
        storage,
        joinKey(dataKey, PLAIN_BASE_DIR, 'backup_manifest'),
        request.checksum,
      );
    }

    if (server.xlogMethod === 'stream') {
      if (localDir !== undefined) {
        streamDir = join(localDir, STREAM_DIR);
        await mkdir(streamDir, { mode: 0o700 });
      } else {
        streamDir = await ctx.scratchDir(STREAM_DIR);
      }
      streamer = await WalStreamer.open(
        { host: server.host, port: server.port, user: server.user },
        facts.walSegmentSize,
        streamDir,
      );
    }
    const checker = pageCheckerFor(request.verifyPages !== false, facts.dataChecksumVersion, server.name);
    log.debug(`starting backup mode ${Math.round(performance.now())} ms after process start`);
    const { session, startLsn } = await phaseTimes.wait('backup start (checkpoint)', () =>
      BackupSession.start(client, facts.major, `pgbart backup ${id}`),
    );
    log.debug(`backup mode started at ${startLsn}, ${Math.round(performance.now())} ms after process start`);
    streamer?.begin(parseLsn(startLsn));
    checker?.begin(parseLsn(startLsn));
    const t0 = Date.now();
    const phase = (what: string) => log.debug(`${what} after ${Date.now() - t0} ms`);
    const base = await makeWriter('base');
    await copyTree(host, facts.dataDirectory, 'base', base, request, checker);
    for (const ts of facts.tablespaces) {
      const writer = await makeWriter(String(ts.oid));
      await copyTree(host, ts.location, String(ts.oid), writer, request, checker);
      // In place on a local file system (startable as BART's); on S3 the manifest holds the link.
      if (request.format === 'plain' && localDir !== undefined)
        await symlink(`../../${ts.oid}`, join(localDir, PLAIN_BASE_DIR, 'pg_tblspc', String(ts.oid)));
    }
    phase('data files copied');
    if (checker) recordPageChecks(checker, info);
    // We wait for the archive ourselves (below, polling every 25 ms): pg_backup_stop's own wait
    // sleeps a full second between checks.
    const stop = await phaseTimes.wait('backup stop', session.stop(false));
    phase('backup mode stopped');
    const label = await addStopFiles(base, stop);
    const streamedNames = streamer ? await streamer.finish(parseLsn(stop.stopLsn)) : undefined;
    const wal = await phaseTimes.wait(
      'WAL wait and store',
      storeBackupWal(base, {
        archive: ctx.walArchive,
        label,
        stopLsn: stop.stopLsn,
        segmentSize: facts.walSegmentSize,
        timeoutMs: 600_000,
        ...(streamedNames ? { streamed: { dir: streamDir!, names: streamedNames } } : {}),
      }),
    );
    phase('WAL stored');
    const done = await outputs.finish({
      info,
      label,
      stopLsn: stop.stopLsn,
      wal,
      manifestLinesWritten: () => sinkChain,
    });
    if (pgManifest) {
      await pgManifest.finish(label.timeline, label.startLsn, stop.stopLsn);
      pgManifest = undefined;
    }
    phase('archives finished');
    progress.end();
    return done;
  } catch (err) {
    await outputs?.abort();
    await pgManifest?.abort();
    throw err;
  } finally {
    await outputs?.close();
    await streamer?.close();
    if (streamDir !== undefined) await rm(streamDir, { recursive: true, force: true });
  }
}

/**
 * Copies a data directory (`archive` base) or tablespace (its OID) through an archive writer (files
 * in parallel for plain), relation files' pages verified by `checker` when given.
 */
async function copyTree(
  host: DataHost,
  root: string,
  archive: string,
  writer: ArchiveWriter,
  request: FullBackupOptions,
  checker: PageChecker | undefined,
): Promise<void> {
  const isTablespace = archive !== 'base';
  const parallel = request.format === 'plain' ? request.threads * 2 : 1;
  const calls = new WriterCalls(parallel);
  // A tar is written in order, one file after the other; reading the next small files of this host
  // ahead keeps the disk busy while the current one is hashed and written (most files of a cluster are small).
  const readAhead = parallel === 1 && host.description === 'local';
  const window: { entry: HostEntry; content: Promise<EntryContent | undefined> }[] = [];
  const addNext = async () => {
    const next = window.shift()!;
    await writer.add(next.entry, await next.content);
  };
  for await (const raw of backupEntries(checkedWalk(host, root), isTablespace)) {
    // pg_wal may be a symlink to another disk (initdb -X); in the backup it is a directory.
    const entry: HostEntry = raw.type === 'symlink' && raw.path === 'pg_wal' ? { ...raw, type: 'dir', size: 0 } : raw;
    const path = join(root, entry.path);
    const target = entry.type === 'file' ? checker?.target(archive, entry.path) : undefined;
    const pages = target ? { pages: { checker: checker!, target, host, path } } : {};
    const source = entry.type === 'file' ? { host, path, ...pages } : undefined;
    if (readAhead) {
      const content =
        source && entry.size <= READ_AHEAD_MAX_FILE
          ? readSmallFile(host, path, entry.size).then((c) => ({ ...c, ...pages }))
          : Promise.resolve(source);
      content.catch(() => undefined); // awaited in order below; never an unhandled rejection meanwhile
      window.push({ entry, content });
      if (window.length >= READ_AHEAD_FILES) await addNext();
      continue;
    }
    if (!(await calls.add(writer.add(entry, source)))) break;
  }
  while (window.length > 0) await addNext();
  await calls.drain();
}

/** Files up to this size are read ahead whole (tar format, local host). */
const READ_AHEAD_MAX_FILE = 256 * 1024;
/** How many entries may be read ahead of the one being written (bounds memory to ~8 MB). */
const READ_AHEAD_FILES = 32;

/**
 * Reads a small file whole, exactly `size` bytes as listed: zero-padded if it shrank or vanished
 * meanwhile (WAL replay repairs it, as for any file changed during a hot backup), cut if it grew.
 */
async function readSmallFile(host: DataHost, path: string, size: number): Promise<EntryContent> {
  const data = Buffer.alloc(size);
  const file = await host.open(path);
  if (!file) return { data };
  try {
    let got = 0;
    while (got < size) {
      const n = await file.read(data, got, size - got, got);
      if (n === 0) break;
      got += n;
    }
  } finally {
    await file.close();
  }
  return { data };
}
