// Backup engine (pg_basebackup): a full backup taken by running pg_basebackup into the catalog.

import { execFile, spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { readFile, readdir, rename, rmdir, stat, symlink, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import tar from 'tar-stream';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { LocalHost } from '../hosts/local/data-host.js';
import { checkedWalk } from '../hosts/checked-walk.js';
import { TreeShapeCheck } from '../util/untrusted-path.js';
import { parseBackupLabel } from '../postgres/backup-session.js';
import { createDecompressor } from '../storage/compression.js';
import { segmentName, parseArchiveFileName } from '../wal/segment-name.js';
import { BartError, errorMessage } from '../util/errors.js';
import { log } from '../util/log.js';
import { parseLsn } from '../util/lsn.js';
import type { BackupInfo } from '../catalog/backup-info.js';
import { runBackupTransaction, type BackupContext } from './transaction.js';
import type { FullBackupOptions } from './full-backup.js';
import { MANIFEST_FILE, PLAIN_BASE_DIR } from '../catalog/layout.js';
import { joinKey, type RepositoryStorage } from '../storage/storage.js';
import { WriterCalls } from './engine-outputs.js';
import { artifactHasher, createChecksum, ManifestWriter, type ManifestFileEntry } from '../catalog/manifest.js';

/** Major version of a pg_basebackup binary (`pg_basebackup (PostgreSQL) 15.18`). */
async function basebackupMajor(path: string): Promise<number> {
  try {
    const { stdout } = await promisify(execFile)(path, ['--version']);
    const m = /\(PostgreSQL\)\s+(\d+)/.exec(stdout);
    if (!m) throw new Error(`unexpected version output "${stdout.trim()}"`);
    return Number(m[1]);
  } catch (err) {
    throw new BartError(`pg_basebackup_path ${path} cannot be run: ${errorMessage(err)}`);
  }
}

function compressionArgs(opts: FullBackupOptions, major: number): string[] {
  if (opts.compression === 'none') return [];
  if (opts.format === 'plain') {
    throw new BartError(
      'pg_basebackup writes plain backups uncompressed: use -F t with compression, or the native engine (without --with-pg_basebackup)',
    );
  }
  if (major >= 15)
    return [`--compress=client-${opts.compression}${opts.compression === 'lz4' ? '' : `:${opts.level}`}`];
  if (opts.compression !== 'gzip')
    throw new BartError(
      `pg_basebackup ${major} supports only gzip; use pg_basebackup 15 or later for ${opts.compression}`,
    );
  return ['-Z', String(opts.level)];
}

/** What to do about the errors pg_basebackup is known for. */
function basebackupHint(errorLine: string | undefined): string {
  if (errorLine && /has already been removed/.test(errorLine)) {
    return ' (the server recycled WAL the backup still needed: raise wal_keep_size on the server, or set xlog_method = stream, or use the native engine, which takes WAL from the archive)';
  }
  return '';
}

/** Runs pg_basebackup; its progress and errors go to the log, never a password to argv. */
function runBasebackup(path: string, args: string[]): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(path, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, PGAPPNAME: 'pgbart pg_basebackup' },
    });
    let lastLines = '';
    // The line that says what went wrong: pg_basebackup's last words are usually only
    // "removing data directory ...", printed after its error.
    let errorLine: string | undefined;
    const onLine = (line: string) => {
      if (line.trim() === '') return;
      log.debug(`pg_basebackup: ${line}`);
      if (errorLine === undefined && /\b(error|FATAL|ERROR):/.test(line)) errorLine = line.trim();
    };
    // A chunk may end in the middle of a line: only whole lines are judged (each stream on its own).
    const collector = () => {
      let partial = '';
      return {
        data: (d: Buffer) => {
          const text = partial + d.toString();
          const lines = text.split('\n');
          partial = lines.pop()!;
          lines.forEach(onLine);
          lastLines = (lastLines + d.toString()).split('\n').slice(-5).join('\n');
        },
        end: () => onLine(partial),
      };
    };
    const out = collector();
    const err = collector();
    child.stdout!.on('data', out.data).on('end', out.end);
    child.stderr!.on('data', err.data).on('end', err.end);
    child.on('error', (err) => reject(new BartError(`cannot run ${path}: ${err.message}`)));
    child.on('close', (code) => {
      if (code === 0) resolvePromise();
      else
        reject(
          new BartError(
            `pg_basebackup failed (exit ${code}): ${errorLine ?? lastLines.trim().split('\n').pop() ?? ''}${basebackupHint(errorLine)}`,
          ),
        );
    });
  });
}

/**
 * `BACKUP --with-pg_basebackup`: delegates the copy to pg_basebackup_path, then catalogs the
 * result exactly like a native backup (manifest with per-file checksums, backupinfo), so RESTORE,
 * VERIFY-CHKSUM and SHOW-BACKUPS treat both alike. Its tar entries carry no unit offsets: readers
 * decode those archives sequentially. pg_basebackup writes a directory: in place on a local file
 * system; for an object store, in a private staging directory on this host (beside the server's
 * lock, under backup_path), whose files are then uploaded through the storage and which is removed.
 */
export async function takeBasebackup(
  config: BartConfig,
  server: ServerConfig,
  opts: FullBackupOptions,
): Promise<BackupInfo> {
  const path = config.global.pgBasebackupPath;
  if (!path)
    throw new BartError(`--with-pg_basebackup needs pg_basebackup_path in the [BART] section of ${config.path}`);
  const major = await basebackupMajor(path);
  return runBackupTransaction(config, server, { ...opts, engine: 'pg_basebackup' }, (ctx) =>
    basebackupBody(ctx, path, major, opts),
  );
}

async function basebackupBody(
  ctx: BackupContext,
  path: string,
  pgbMajor: number,
  opts: FullBackupOptions,
): Promise<BackupInfo> {
  const { facts, storage, dataKey } = ctx;
  if (facts.major > pgbMajor) {
    throw new BartError(
      `pg_basebackup ${pgbMajor} (${path}) cannot back up PostgreSQL ${facts.major}: set pg_basebackup_path to pg_basebackup ${facts.major} or later, or use the native engine`,
    );
  }
  // The transaction removes the scratch directory however the backup ends.
  const staging = ctx.localDir === undefined ? await ctx.scratchDir('pg_basebackup') : undefined;
  return basebackupInto(ctx, staging ?? ctx.localDir!, path, pgbMajor, opts, async () => {
    if (staging === undefined) return;
    log.info(`uploading the backup written by pg_basebackup to ${joinKey(storage.location, dataKey)}`);
    await uploadStaged(storage, staging, dataKey, Math.max(1, opts.threads));
  });
}

/**
 * Uploads every regular file below `dir` to `prefix` of the storage, `parallel` at a time, streamed
 * (a writer's write() waits while its upload window is full). Directories and symlinks are not
 * objects: the manifest records them.
 */
async function uploadStaged(storage: RepositoryStorage, dir: string, prefix: string, parallel: number): Promise<void> {
  const files: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const e of await readdir(join(dir, rel), { withFileTypes: true })) {
      const child = rel === '' ? e.name : `${rel}/${e.name}`;
      if (e.isDirectory()) await walk(child);
      else if (e.isFile()) files.push(child);
    }
  };
  await walk('');
  const calls = new WriterCalls(parallel);
  for (const rel of files) {
    const upload = async () => {
      const local = join(dir, rel);
      const size = (await stat(local)).size;
      const writer = await storage.create(joinKey(prefix, rel), { durable: false, sizeHint: size });
      try {
        for await (const chunk of createReadStream(local, { highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>)
          await writer.write(chunk);
        await writer.finish();
      } catch (err) {
        await writer.abort();
        throw err;
      }
    };
    if (!(await calls.add(upload()))) break;
  }
  await calls.drain();
}

/**
 * Runs pg_basebackup into `partialDir` (a directory of this host) and catalogs what it wrote; the
 * manifest goes to the backup's data prefix in the storage. `beforeFinish` runs once everything is
 * cataloged, before the manifest is completed.
 */
async function basebackupInto(
  ctx: BackupContext,
  partialDir: string,
  path: string,
  pgbMajor: number,
  opts: FullBackupOptions,
  beforeFinish: () => Promise<void>,
): Promise<BackupInfo> {
  const { server, facts, info, id, storage, dataKey } = ctx;
  const target = opts.format === 'tar' ? join(partialDir, 'pg_basebackup') : join(partialDir, PLAIN_BASE_DIR);
  const args = [
    '-h',
    server.host,
    '-p',
    String(server.port),
    '-U',
    server.user,
    '-w',
    '-D',
    target,
    '-F',
    opts.format === 'tar' ? 't' : 'p',
    '-X',
    server.xlogMethod,
    '-c',
    'fast',
    '-l',
    `pgbart backup ${id}`,
    // pg_basebackup's own manifest: the same algorithm as pgbart's where it has it (not MD5: then its default).
    `--manifest-checksums=${opts.checksum === 'SHA256' || opts.checksum === 'NONE' ? opts.checksum : 'CRC32C'}`,
    // pg_basebackup verifies page checksums itself (and fails on a corrupt page) unless told not to.
    ...(opts.verifyPages === false ? ['--no-verify-checksums'] : []),
    ...compressionArgs(opts, pgbMajor),
    ...(opts.format === 'plain'
      ? facts.tablespaces.map((t) => `--tablespace-mapping=${t.location}=${join(partialDir, String(t.oid))}`)
      : []),
  ];
  log.info(`creating full backup using pg_basebackup for server '${server.name}'`);
  await runBasebackup(path, args);

  if (opts.format === 'tar') {
    for (const name of await readdir(target)) await rename(join(target, name), join(partialDir, name));
    await rmdir(target);
  } else {
    // pg_basebackup linked the tablespaces to absolute paths inside <id>.partial: make them relative.
    for (const t of facts.tablespaces) {
      const link = join(partialDir, PLAIN_BASE_DIR, 'pg_tblspc', String(t.oid));
      await unlink(link);
      await symlink(`../../${t.oid}`, link);
    }
  }
  const pgManifestPath =
    opts.format === 'tar' ? join(partialDir, 'backup_manifest') : join(partialDir, PLAIN_BASE_DIR, 'backup_manifest');
  const pgManifest = JSON.parse(await readFile(pgManifestPath, 'utf8')) as {
    'WAL-Ranges': { Timeline: number; 'Start-LSN': string; 'End-LSN': string }[];
  };
  const range = pgManifest['WAL-Ranges'][0]!;

  const manifest = await ManifestWriter.create(storage, joinKey(dataKey, MANIFEST_FILE), {
    manifest: 'pgbart',
    version: 1,
    server: server.name,
    id,
    format: opts.format,
    compression: opts.compression,
    checksumAlgorithm: opts.checksum,
  });
  let labelText = '';
  const walFiles: string[] = [];
  let walBytes = 0;
  let dataBytes = 0;
  let storedBytes = 0;
  const note = async (entry: ManifestFileEntry, content?: Buffer) => {
    await manifest.addFile(entry);
    if (entry.type !== 'file') return;
    dataBytes += entry.size;
    if (entry.archive === 'base' && entry.path === 'backup_label' && content) labelText = content.toString();
    const m = /^pg_wal\/([^/]+)$/.exec(entry.path);
    if (entry.archive === 'base' && m && parseArchiveFileName(m[1]!)?.kind === 'segment') {
      walFiles.push(m[1]!);
      walBytes += entry.size;
    }
  };
  try {
    if (opts.format === 'tar') {
      for (const name of (await readdir(partialDir)).filter((n) => /^(base|\d+)\.tar/.test(n)).sort()) {
        const archive = name.replace(/\.tar.*$/, '');
        const artifactHash = artifactHasher();
        const size = (await stat(join(partialDir, name))).size;
        storedBytes += size;
        const extract = tar.extract();
        const shape = new TreeShapeCheck(`${name} written by pg_basebackup`, false);
        const reading = (async () => {
          for await (const item of extract) {
            const h = item.header;
            const type = h.type === 'directory' ? 'dir' : h.type === 'symlink' ? 'symlink' : 'file';
            const entryPath = shape.add(h.name.replace(/^\.\//, '').replace(/\/$/, ''), type);
            const hash = createChecksum(opts.checksum);
            const keep: Buffer[] = [];
            let bytes = 0;
            for await (const chunk of item as AsyncIterable<Buffer>) {
              hash?.update(chunk);
              bytes += chunk.length;
              if (entryPath === 'backup_label') keep.push(chunk);
            }
            await note(
              {
                path: entryPath,
                archive,
                type,
                size: type === 'file' ? bytes : 0,
                mode: h.mode ?? 0o600,
                mtime: Math.floor((h.mtime?.getTime() ?? Date.now()) / 1000),
                ...(type === 'file' && hash ? { checksum: hash.digest('hex') } : {}),
                ...(h.linkname ? { linkTarget: h.linkname } : {}),
              },
              Buffer.concat(keep),
            );
          }
        })();
        const hashing = new Writable({
          write(chunk: Buffer, _e, cb) {
            artifactHash.update(chunk);
            cb();
          },
        });
        const source = createReadStream(join(partialDir, name));
        source.on('data', (d) => hashing.write(d));
        await pipeline(source, createDecompressor(opts.compression), extract);
        await reading;
        shape.finish();
        hashing.end();
        await manifest.addArtifact({ artifact: name, size, checksum: artifactHash.hex() });
        info.artifactChecksums.push({ file: name, checksum: artifactHash.hex() });
      }
    } else {
      const host = new LocalHost();
      const roots: [string, string][] = [
        ['base', join(partialDir, PLAIN_BASE_DIR)],
        ...facts.tablespaces.map((t): [string, string] => [String(t.oid), join(partialDir, String(t.oid))]),
      ];
      for (const [archive, root] of roots) {
        for await (const e of checkedWalk(host, root)) {
          if (
            archive === 'base' &&
            (e.path === 'backup_manifest' || (e.type === 'symlink' && e.path.startsWith('pg_tblspc/')))
          )
            continue;
          const hash = createChecksum(opts.checksum);
          let content: Buffer | undefined;
          if (e.type === 'file') {
            const chunks: Buffer[] = [];
            for await (const chunk of createReadStream(join(root, e.path)) as AsyncIterable<Buffer>) {
              hash?.update(chunk);
              if (e.path === 'backup_label') chunks.push(chunk);
            }
            content = Buffer.concat(chunks);
            storedBytes += e.size;
          }
          await note(
            {
              path: e.path,
              archive,
              type: e.type,
              size: e.type === 'file' ? e.size : 0,
              mode: e.mode,
              mtime: Math.floor(e.mtimeMs / 1000),
              ...(e.type === 'file' && hash ? { checksum: hash.digest('hex') } : {}),
              ...(e.linkTarget !== undefined ? { linkTarget: e.linkTarget } : {}),
            },
            content,
          );
        }
      }
    }
    if (labelText === '') throw new BartError('the backup written by pg_basebackup has no backup_label');
    const label = parseBackupLabel(labelText);
    const stopLsn = parseLsn(range['End-LSN']);
    const done: BackupInfo = {
      ...info,
      sizeBytes: storedBytes,
      dataBytes,
      timeline: label.timeline,
      startWalFile: label.startWalFile,
      stopWalFile: segmentName(range.Timeline, (stopLsn - 1n) / BigInt(facts.walSegmentSize), facts.walSegmentSize),
      startLsn: range['Start-LSN'],
      stopLsn: range['End-LSN'],
      checkpointLsn: label.checkpointLsn,
      walFiles: walFiles.sort(),
      walBytes,
      stopTime: new Date(),
    };
    const { status: _status, pid: _pid, ...recorded } = done;
    await manifest.addInfo({
      ...recorded,
      startTime: done.startTime.toISOString(),
      stopTime: done.stopTime.toISOString(),
    });
    await beforeFinish();
    await manifest.finish();
    return done;
  } catch (err) {
    await manifest.abandon();
    throw err;
  }
}
