// Backup engine outputs: the worker pools, archive writers and manifest the full and incremental engines share.

import { MANIFEST_FILE, PLAIN_BASE_DIR, tarName } from '../catalog/layout.js';
import { hashName, ManifestWriter } from '../catalog/manifest.js';
import type { BackupInfo } from '../catalog/backup-info.js';
import { compressionExtension } from '../storage/compression.js';
import type { CompressResult } from '../storage/compress-worker.js';
import type { FileCopyResult, FileCopyTask } from '../storage/file-copy-worker.js';
import { joinKey } from '../storage/storage.js';
import { HashThread } from './hash-thread.js';
import { WorkerPool } from '../util/worker-pool.js';
import { UNIT_SIZE, type ArchiveWriter, type ArchiveWriterSettings, type EntrySink } from './archive-writer.js';
import { finishBackup, type BackupEnd } from './finish.js';
import { poolCompressor } from './pool-compressor.js';
import { PlainArchiveWriter } from './plain-archive-writer.js';
import { TarArchiveWriter } from './tar-archive-writer.js';
import type { BackupContext } from './transaction.js';

/** A worker pool, as far as ending it goes. */
type Closable = { close(): Promise<void> };

/** How an engine wants its outputs. */
export interface BackupOutputOptions {
  /** The parent backup's id, recorded in the manifest's header (incremental backups). */
  parent?: string;
  /**
   * Plain format: copy whole local files in worker threads (hashing and compression off the main
   * thread). The incremental engine reads relation files block by block itself and does not.
   */
  fileCopyWorkers?: boolean;
}

/**
 * What a native backup engine writes under the backup's data prefix: the compression worker pool (when
 * compressing), the file-copy pool (plain format, when asked), one archive writer per archive and
 * the pgbart manifest. Opened before backup mode starts; {@link finish} completes them, {@link abort}
 * throws away what a failed backup wrote, and {@link close} (always, in a `finally`) ends the pools.
 */
export class BackupOutputs {
  /** Every archive writer made, in order (emptied by {@link finish}). */
  readonly writers: ArchiveWriter[] = [];
  private manifestOpen: boolean;

  private constructor(
    private readonly ctx: BackupContext,
    /** The settings every archive writer of this backup gets. */
    readonly settings: ArchiveWriterSettings,
    /** The pgbart manifest being written. */
    readonly manifest: ManifestWriter,
    private readonly pools: Closable[],
  ) {
    this.manifestOpen = true;
  }

  /** Starts the pools and creates the manifest; on a failure, closes what it started. */
  static async open(ctx: BackupContext, opts: BackupOutputOptions = {}): Promise<BackupOutputs> {
    const { request, server, id, storage, dataKey } = ctx;
    const pools: Closable[] = [];
    try {
      let pool: WorkerPool<CompressResult> | undefined;
      if (request.compression !== 'none') {
        pool = new WorkerPool<CompressResult>(
          new URL('../storage/compress-worker.js', import.meta.url),
          request.threads,
          'compress (workers)',
        );
        pools.push(pool);
      }
      let filePool: WorkerPool<FileCopyResult> | undefined;
      // The workers write files of this host themselves: a POSIX fast path only (on S3 every file
      // goes through the storage's writers on the main thread).
      if (opts.fileCopyWorkers && request.format === 'plain' && ctx.localDir !== undefined) {
        const url = new URL('../storage/file-copy-worker.js', import.meta.url);
        filePool = new WorkerPool<FileCopyResult>(url, request.threads, 'file copy (workers)');
        pools.push(filePool);
      }
      // File checksums beside the main thread, which reads and writes. Not started when the file-copy workers copy
      // every file (plain format, local host, POSIX repository: they hash what they copy themselves); then only
      // backup_label and tablespace_map go through the writers, hashed where they are. Files of ssh hosts and on
      // S3 go through the writers. CRC-32C is hashed where the bytes are: the CPU's CRC instruction (~6 GB/s)
      // costs less than copying every byte into the thread's shared memory, and takes no core from compression.
      const algorithm = hashName(request.checksum);
      const workersCopyAll = filePool !== undefined && ctx.host.description === 'local';
      let hashThread: HashThread | undefined;
      if (algorithm !== undefined && algorithm !== 'crc32c' && !workersCopyAll) {
        hashThread = new HashThread(algorithm);
        pools.push(hashThread);
      }
      const maxInFlight = Math.max(2, request.threads * 2);
      const unitSize = request.format === 'tar' ? UNIT_SIZE : 4 * UNIT_SIZE;
      const settings: ArchiveWriterSettings = {
        compression: request.compression,
        level: request.level,
        checksum: request.checksum,
        // Spare buffers: as many as units can be under way (plain: two per file being written, as many files).
        ...poolCompressor(pool, request.compression, request.level, unitSize, 2 * maxInFlight),
        maxInFlight,
        unitSize,
        ...(filePool ? { copyLocalFile: (task: FileCopyTask) => copyInWorker(filePool, task) } : {}),
        ...(hashThread ? { hashThread } : {}),
      };
      const manifest = await ManifestWriter.create(storage, joinKey(dataKey, MANIFEST_FILE), {
        manifest: 'pgbart',
        version: 1,
        server: server.name,
        id,
        format: request.format,
        compression: request.compression,
        checksumAlgorithm: request.checksum,
        ...(opts.parent !== undefined ? { parent: opts.parent } : {}),
      });
      return new BackupOutputs(ctx, settings, manifest, pools);
    } catch (err) {
      for (const p of pools) await p.close();
      throw err;
    }
  }

  /** A writer for `archive` (`base` or a tablespace OID) in the backup's format; its entries go to `sink`. */
  async makeWriter(archive: string, sink: EntrySink): Promise<ArchiveWriter> {
    const { request, storage, dataKey } = this.ctx;
    const ext = compressionExtension(request.compression);
    // Not durable one by one: the transaction syncs the whole backup once before publishing it.
    const writer =
      request.format === 'tar'
        ? new TarArchiveWriter(
            tarName(archive, ext),
            archive,
            await storage.create(joinKey(dataKey, tarName(archive, ext)), { durable: false }),
            this.settings,
            sink,
          )
        : new PlainArchiveWriter(
            storage,
            joinKey(dataKey, archive === 'base' ? PLAIN_BASE_DIR : archive),
            archive,
            this.settings,
            sink,
          );
    this.writers.push(writer);
    return writer;
  }

  /** Finishes the archives and the manifest (see finishBackup); returns the completed backupinfo. */
  async finish(end: Omit<BackupEnd, 'writers' | 'manifest'>): Promise<BackupInfo> {
    const done = await finishBackup({ ...end, writers: this.writers, manifest: this.manifest });
    this.manifestOpen = false;
    return done;
  }

  /** After a failure: aborts the writers and abandons the manifest (unless {@link finish} completed it). */
  async abort(): Promise<void> {
    for (const w of this.writers) await w.abort().catch(() => undefined);
    if (this.manifestOpen) await this.manifest.abandon();
  }

  /** Ends the worker pools. */
  async close(): Promise<void> {
    for (const p of this.pools) await p.close();
  }
}

/** Runs a file copy in the pool; a full disk keeps its errno so the transaction says so. */
async function copyInWorker(pool: WorkerPool<FileCopyResult>, task: FileCopyTask): Promise<FileCopyResult> {
  try {
    return await pool.run(task);
  } catch (err) {
    const message = (err as Error).message;
    if (message.startsWith('ENOSPC')) throw Object.assign(new Error(message), { code: 'ENOSPC' });
    throw err;
  }
}

/**
 * The archive writer calls of one tree walk, `limit` at a time (plain format writes files in
 * parallel; a tar, one after the other). The first failure stops the walk: {@link add} then says so,
 * and {@link drain} throws it once the calls under way have ended.
 */
export class WriterCalls {
  private readonly running = new Set<Promise<void>>();
  private failure: unknown;

  constructor(private readonly limit: number) {}

  /** Takes a started call, waiting while `limit` are under way; false once one failed (stop walking). */
  async add(call: Promise<void>): Promise<boolean> {
    if (this.limit === 1) {
      await call;
      return true;
    }
    const tracked: Promise<void> = call
      .catch((err) => {
        this.failure ??= err;
      })
      .finally(() => this.running.delete(tracked));
    this.running.add(tracked);
    if (this.running.size >= this.limit) await Promise.race(this.running);
    return !this.failure;
  }

  /** Waits for the calls under way; throws the first failure. */
  async drain(): Promise<void> {
    await Promise.all(this.running);
    if (this.failure) throw this.failure;
  }
}
