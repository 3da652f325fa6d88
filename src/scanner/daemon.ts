// Scanner daemon: each server's archive watched and every new WAL segment scanned into an MBM.

import { watch, type FSWatcher } from 'node:fs';
import { availableParallelism } from 'node:os';
import { chmod, readdir, stat, unlink } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { BartError, errorMessage } from '../util/errors.js';
import { WorkerPool } from '../util/worker-pool.js';
import { scanToSummary, type ScanSummary } from './scan-summary.js';
import { log } from '../util/log.js';
import { parseLsn } from '../util/lsn.js';
import { parseWalFileName, readSegmentSize, walFileSegNo } from '../wal/file.js';
import { indexMbmFiles, type ChangeSetRequest } from './change-set.js';
import { parseMbmFileName } from './mbm-name.js';
import { scanArchivedSegment } from './scan-wal-file.js';
import { openWalArchive } from '../storage/open-repository.js';
import { StorageNotFoundError, type RepositoryStorage, type StoredObject } from '../storage/storage.js';
import { ensureMbms } from './ensure-mbms.js';
import type { ScanBuffers } from './scan-wal-file.js';
import { MAX_REQUEST_BYTES, parseScannerRequest, type ScannerRequest, type ScannerResponse } from './protocol.js';
import { prepareSocketDirectory, scannerPidPath, scannerSocketPath } from './paths.js';
import { createPidFile, removeOwnPidFile } from './pid-file.js';
import { DEFAULT_WAL_SEGMENT_SIZE } from '../postgres/constants.js';

/** With scan_interval = 0 we still rescan this often, in case a file notification was lost. */
const SAFETY_RESCAN_MS = 60_000;
/** A plain WAL file shorter than a segment and younger than this is still being copied. */
const COPY_GRACE_MS = 30_000;
/** A client that sends no complete request line within this time is dropped (it holds a descriptor). */
const REQUEST_IDLE_MS = 10_000;
/** Simultaneous socket connections; more are refused, so a flood cannot exhaust descriptors. */
const MAX_CONNECTIONS = 64;

/**
 * Scans one server's archive: the backlog at start, then whatever arrives (fs.watch plus a
 * periodic rescan). Passes never overlap; a trigger during a pass causes one more pass.
 */
class ServerWorker {
  readonly server: ServerConfig;
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private segmentSize: number | undefined;
  private readonly buffers: ScanBuffers = {};
  /** Files that failed, by `name:size:mtime`, so an error is logged once per file version. */
  private readonly failed = new Set<string>();
  private dirProblem = false;
  /** Object-store segments whose last record waits for the next segment: what they wait for. */
  private readonly waiting = new Map<string, { next: string; histories: number }>();
  private watchWarned = false;
  private chain: Promise<unknown> = Promise.resolve();

  private readonly pool: WorkerPool<ScanSummary> | undefined;
  /** The server's WAL archive (openWalArchive). */
  readonly archive: RepositoryStorage;
  /** The archive is a directory on this host: watched, and scanned on worker threads, as always. */
  private readonly local: boolean;

  constructor(server: ServerConfig, pool: WorkerPool<ScanSummary> | undefined, archive: RepositoryStorage) {
    this.server = server;
    this.pool = pool;
    this.archive = archive;
    this.local = archive.localPath('') !== undefined;
  }

  start(): void {
    const interval = this.server.scanInterval > 0 ? this.server.scanInterval * 1000 : SAFETY_RESCAN_MS;
    this.timer = setInterval(() => this.trigger(), interval);
    // An object store cannot be watched: periodic passes only (ARCHIVE-PUSH maps most segments itself).
    if (this.local) this.startWatch();
    this.trigger();
  }

  private startWatch(): void {
    try {
      this.watcher = watch(this.server.archivePath, { persistent: true }, (_event, name) => {
        if (name && (name.endsWith('.mbm') || name.startsWith('.'))) return;
        if (this.debounce) return;
        this.debounce = setTimeout(() => {
          this.debounce = undefined;
          this.trigger();
        }, 100);
      });
      this.watcher.on('error', (err) => {
        log.warning(
          `server ${this.server.sectionName}: watching ${this.server.archivePath} failed (${err.message}); relying on periodic scans`,
        );
        this.watcher?.close();
        this.watcher = undefined;
      });
    } catch (err) {
      // Retried after each successful pass (the directory may appear later); said once.
      if (!this.watchWarned)
        log.warning(
          `server ${this.server.sectionName}: cannot watch ${this.server.archivePath} (${errorMessage(err)}); relying on periodic scans`,
        );
      this.watchWarned = true;
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (this.debounce) clearTimeout(this.debounce);
    this.watcher?.close();
    await this.running;
    await this.chain;
    await this.archive.close();
  }

  /** Runs `fn` when no pass or other exclusive task of this server runs (never two scans of one file). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const r = this.chain.then(fn, fn);
    this.chain = r.catch(() => undefined);
    return r;
  }

  /** Requests a pass (now, or right after the running one). */
  trigger(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      try {
        do {
          this.again = false;
          await this.exclusive(() => this.pass());
        } while (this.again && !this.stopped);
      } finally {
        this.running = undefined;
      }
    })();
    return this.running;
  }

  /** One scan of every WAL file in the archive that has no MBM yet, oldest first. */
  private async pass(): Promise<void> {
    if (!this.local) return this.storagePass();
    const dir = this.server.archivePath;
    let names: string[];
    try {
      names = await readdir(dir);
      if (this.dirProblem) log.info(`server ${this.server.sectionName}: archive directory ${dir} is readable again`);
      this.dirProblem = false;
      // The directory may have been created after we started (bart INIT): watch it now.
      if (!this.watcher && !this.stopped) this.startWatch();
    } catch (err) {
      if (!this.dirProblem)
        log.error(`server ${this.server.sectionName}: cannot read the archive directory ${dir}: ${errorMessage(err)}`);
      this.dirProblem = true;
      return;
    }
    const wal = names
      .filter((n) => {
        const p = parseWalFileName(n);
        return p !== undefined && !p.partial;
      })
      .sort();
    if (wal.length === 0) return;
    if (this.segmentSize === undefined) {
      for (const n of wal) {
        this.segmentSize = await readSegmentSize(join(dir, n));
        if (this.segmentSize) break;
      }
      if (this.segmentSize === undefined) this.segmentSize = DEFAULT_WAL_SEGMENT_SIZE;
    }
    const segSize = this.segmentSize;
    const index = indexMbmFiles(dir);
    const plainNames = new Set(names);
    const todo: Array<{ name: string; path: string; version: string }> = [];
    for (const n of wal) {
      const p = parseWalFileName(n)!;
      // Prefer the plain file when both it and its .gz exist (compression in progress).
      if (p.compressed && plainNames.has(n.slice(0, -3))) continue;
      const segNo = walFileSegNo(p.segmentName, segSize);
      if (index.has(`${p.timeline}:${BigInt(segNo + 1) * BigInt(segSize)}`)) continue;
      const path = join(dir, n);
      try {
        const st = await stat(path);
        const version = `${n}:${st.size}:${st.mtimeMs}`;
        if (!p.compressed && st.size < segSize && Date.now() - st.mtimeMs < COPY_GRACE_MS) {
          log.debug(`server ${this.server.sectionName}: ${n} is ${st.size} bytes, probably still being copied; later`);
          continue;
        }
        if (!this.failed.has(version)) todo.push({ name: n, path, version });
      } catch {
        continue; // removed meanwhile (e.g. MANAGE compressed or deleted it)
      }
    }
    // Segments are independent (a record crossing into the next one is finished from that
    // file), so they are scanned in parallel on worker threads when there are several.
    await Promise.all(todo.map((t) => this.scanOne(t)));
  }

  /**
   * {@link pass} for an archive in an object store: one listing (names, sizes and times come with
   * it), then each segment without an MBM read through the storage and scanned in this thread,
   * one at a time (a bounded buffer per segment). ARCHIVE-PUSH maps the segments it stores, so this
   * only fills gaps: segments pushed before incremental backups were enabled, or whose mapping
   * at push time failed or waited for a next segment that came another way.
   */
  private async storagePass(): Promise<void> {
    const where = this.archive.location;
    let objects: StoredObject[] = [];
    try {
      for await (const page of this.archive.list('', { shallow: true })) objects.push(...page.objects);
      if (this.dirProblem) log.info(`server ${this.server.sectionName}: WAL archive ${where} is readable again`);
      this.dirProblem = false;
    } catch (err) {
      if (!this.dirProblem)
        log.error(`server ${this.server.sectionName}: cannot list the WAL archive ${where}: ${errorMessage(err)}`);
      this.dirProblem = true;
      return;
    }
    const names = new Set(objects.map((o) => o.key));
    objects = objects.filter((o) => {
      const p = parseWalFileName(o.key);
      return p !== undefined && !p.partial && !(p.compressed && names.has(o.key.slice(0, -3)));
    });
    objects.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    if (objects.length === 0) return;
    const historyCount = [...names].filter((n) => n.endsWith('.history') || n.endsWith('.history.gz')).length;
    const index = new Set<string>();
    for (const n of names) {
      const m = parseMbmFileName(n);
      if (m) index.add(`${m.timeline}:${m.endLsn}`);
    }
    for (const o of objects) {
      if (this.stopped) return;
      const p = parseWalFileName(o.key)!;
      // The MBM is named after the segment's end: segment number + 1 times the segment size.
      const segSize = this.segmentSize ?? DEFAULT_WAL_SEGMENT_SIZE;
      const segNo = walFileSegNo(p.segmentName, segSize);
      if (index.has(`${p.timeline}:${BigInt(segNo + 1) * BigInt(segSize)}`)) continue;
      const version = `${o.key}:${o.size}:${o.modified.getTime()}`;
      if (this.failed.has(version)) continue;
      // A segment that waited for its next one is downloaded again only once that one (or a new timeline) is there.
      const waitedFor = this.waiting.get(o.key);
      if (waitedFor !== undefined && !continuationMayExist(names, waitedFor, historyCount)) continue;
      try {
        const r = await scanArchivedSegment(this.archive, o.key, { buffers: this.buffers, names });
        this.waiting.delete(o.key);
        if (r.status === 'waiting') this.waiting.set(o.key, { next: r.nextSegment, histories: historyCount });
        if (r.status === 'written') {
          this.segmentSize = r.map.segmentSize;
          log.info(
            `server ${this.server.sectionName}: scanned ${o.key} (${r.map.records} records, ${r.map.relations.length} relation forks) -> ${r.mbmPath}`,
          );
        } else
          log.debug(
            `server ${this.server.sectionName}: ${o.key} ends inside a record that continues in ${r.nextSegment}, which has not arrived yet`,
          );
      } catch (err) {
        if (err instanceof StorageNotFoundError) continue; // removed meanwhile (MANAGE compressed or deleted it)
        this.failed.add(version);
        log.error(`server ${this.server.sectionName}: no MBM for ${o.key}: ${errorMessage(err)}`);
      }
    }
  }

  private async scanOne(t: { name: string; path: string; version: string }): Promise<void> {
    if (this.stopped) return;
    const dir = this.server.archivePath;
    try {
      const s: ScanSummary = this.pool
        ? await this.pool.run({ path: t.path })
        : await scanToSummary(t.path, { buffers: this.buffers });
      if (s.status === 'written')
        log.info(
          `server ${this.server.sectionName}: scanned ${t.name} (${s.records} records, ${s.relations} relation forks) -> ${s.mbmPath.slice(dir.length + 1)}`,
        );
      else if (s.status === 'waiting')
        log.debug(
          `server ${this.server.sectionName}: ${t.name} ends inside a record that continues in ${s.nextSegment}, which has not arrived yet`,
        );
      else log.debug(`server ${this.server.sectionName}: ${t.name} disappeared while being scanned`);
    } catch (err) {
      this.failed.add(t.version);
      log.error(`server ${this.server.sectionName}: no MBM for ${t.name}: ${errorMessage(err)}`);
    }
  }
}

/** True when the continuation a segment waited for may now be in the archive (`names`). */
function continuationMayExist(
  names: Set<string>,
  waited: { next: string; histories: number },
  histories: number,
): boolean {
  if (histories !== waited.histories) return true; // a new timeline: its segment may continue ours
  const n = waited.next;
  return [n, `${n}.gz`, `${n}.partial`, `${n}.partial.gz`].some((k) => names.has(k));
}

/**
 * The bart-scanner daemon: one {@link ServerWorker} per server with allow_incremental_backups
 * enabled, a unix socket for `bart` (ping, ensure), a pid file, SIGHUP = reload, SIGTERM/SIGINT =
 * stop. `loadConfig` re-reads bart.cfg on reload.
 */
export class ScannerDaemon {
  private config: BartConfig;
  private readonly loadConfig: () => BartConfig;
  private workers = new Map<string, ServerWorker>();
  private server: Server | undefined;
  private pool: WorkerPool<ScanSummary> | undefined;
  private stopping: Promise<void> | undefined;
  private resolveDone: (() => void) | undefined;
  /** Settles when the daemon has stopped. */
  readonly done: Promise<void>;

  constructor(config: BartConfig, loadConfig: () => BartConfig) {
    this.config = config;
    this.loadConfig = loadConfig;
    this.done = new Promise((r) => (this.resolveDone = r));
  }

  /** Starts workers, the pid file and the socket. */
  async start(): Promise<void> {
    prepareSocketDirectory(this.config, true);
    // The pid file first: created exclusively, it also keeps a second scanner from taking the socket.
    const pidPath = scannerPidPath(this.config);
    createPidFile(pidPath);
    const sockPath = scannerSocketPath(this.config);
    await unlink(sockPath).catch(() => undefined);
    this.server = createServer((sock) => this.serve(sock));
    this.server.maxConnections = MAX_CONNECTIONS;
    try {
      await new Promise<void>((resolvePromise, reject) => {
        this.server!.once('error', reject);
        this.server!.listen(sockPath, () => resolvePromise());
      });
      // Only the BART user (bart runs as that user) may ask for scans.
      await chmod(sockPath, 0o600);
    } catch (err) {
      removeOwnPidFile(pidPath);
      throw new BartError(
        `cannot listen on the scanner socket ${sockPath} (bart_socket_directory / bart_socket_name): ${errorMessage(err)}`,
      );
    }
    const threads = Math.min(4, availableParallelism());
    if (threads > 1) {
      try {
        this.pool = new WorkerPool<ScanSummary>(new URL('./scan-worker.js', import.meta.url), threads);
      } catch (err) {
        log.warning(`scanning on one thread: cannot start worker threads (${errorMessage(err)})`);
      }
    }
    this.startWorkers();
    process.on('SIGHUP', () => void this.reload());
    process.on('SIGTERM', () => void this.stop());
    process.on('SIGINT', () => void this.stop());
    log.info(`bart-scanner started (pid ${process.pid}), socket ${sockPath}`);
  }

  private startWorkers(): void {
    const servers = this.config.servers.filter((s) => s.allowIncrementalBackups);
    if (servers.length === 0)
      log.warning(`no server in ${this.config.path} has allow_incremental_backups = enabled; nothing to scan`);
    for (const s of servers) {
      const w = new ServerWorker(s, this.pool, openWalArchive(this.config, s));
      this.workers.set(s.name, w);
      log.info(
        `server ${s.sectionName}: scanning ${w.archive.location}${s.scanInterval > 0 ? `, forced scan every ${s.scanInterval} s` : ''}`,
      );
      w.start();
    }
  }

  /** Re-reads bart.cfg and restarts the workers (the socket stays). */
  async reload(): Promise<void> {
    let next: BartConfig;
    try {
      next = this.loadConfig();
    } catch (err) {
      log.error(`RELOAD: keeping the old configuration: ${errorMessage(err)}`);
      return;
    }
    log.info(`RELOAD: re-read ${next.path}`);
    const old = [...this.workers.values()];
    this.workers = new Map();
    await Promise.all(old.map((w) => w.stop()));
    this.config = next;
    this.startWorkers();
  }

  /** Stops workers (letting a running scan finish its file), removes socket and pid file. */
  stop(): Promise<void> {
    if (this.stopping) return this.stopping;
    this.stopping = (async () => {
      log.info('bart-scanner stopping');
      await Promise.all([...this.workers.values()].map((w) => w.stop()));
      await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
      await this.pool?.close();
      await unlink(scannerSocketPath(this.config)).catch(() => undefined);
      removeOwnPidFile(scannerPidPath(this.config));
      log.info('bart-scanner stopped');
      this.resolveDone?.();
    })();
    return this.stopping;
  }

  /**
   * One request per connection: at most {@link MAX_REQUEST_BYTES} are buffered until the first
   * newline (a longer line is answered with an error), nothing after it is read, and a client
   * that stays silent is dropped after {@link REQUEST_IDLE_MS}.
   */
  private serve(sock: Socket): void {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    sock.on('error', () => undefined);
    sock.setTimeout(REQUEST_IDLE_MS, () => sock.destroy());
    sock.on('data', (chunk: Buffer) => {
      // Whatever follows the request line (or an oversized line) is read and dropped: the client
      // then reads the answer instead of blocking in its write.
      if (done) return;
      const nl = chunk.indexOf(0x0a);
      const part = nl < 0 ? chunk : chunk.subarray(0, nl);
      if (size + part.length > MAX_REQUEST_BYTES) {
        done = true;
        chunks.length = 0;
        const resp: ScannerResponse = { ok: false, error: `request line longer than ${MAX_REQUEST_BYTES} bytes` };
        sock.end(JSON.stringify(resp) + '\n');
        setTimeout(() => sock.destroy(), 2000).unref();
        return;
      }
      chunks.push(part);
      size += part.length;
      if (nl < 0) return;
      done = true;
      // An ensure may rightly take its whole timeout: no idle limit once the request is in.
      sock.setTimeout(0);
      const line = Buffer.concat(chunks).toString('utf8');
      void this.answer(line).then((resp) => sock.end(JSON.stringify(resp) + '\n'));
    });
  }

  private async answer(line: string): Promise<ScannerResponse> {
    try {
      // Every field is checked before any work: a bad range must not cost the daemon anything.
      const req = parseScannerRequest(line);
      if (req.op === 'ping') return { ok: true, op: 'ping', pid: process.pid, servers: [...this.workers.keys()] };
      return await this.ensure(req);
    } catch (err) {
      return { ok: false, error: errorMessage(err) };
    }
  }

  /** Scans what the range lacks, retrying until complete or the timeout passes. */
  private async ensure(req: Extract<ScannerRequest, { op: 'ensure' }>): Promise<ScannerResponse> {
    const worker = this.workers.get(req.server.toLowerCase());
    const server = worker?.server ?? this.config.servers.find((s) => s.name === req.server.toLowerCase());
    if (!server) return { ok: false, error: `server "${req.server}" is not in ${this.config.path}` };
    const range = {
      timeline: req.timeline,
      startLsn: parseLsn(req.startLsn),
      endLsn: parseLsn(req.endLsn),
      ...(req.segmentSize !== undefined ? { segmentSize: req.segmentSize } : {}),
    };
    const until = Date.now() + Math.max(0, req.timeoutSec) * 1000;
    // A server the daemon does not watch (incremental backups not enabled) gets its storage for this request.
    const archive = worker?.archive ?? openWalArchive(this.config, server);
    try {
      return await this.ensureLoop(worker, archive, range, until);
    } finally {
      if (!worker) await archive.close();
    }
  }

  private async ensureLoop(
    worker: ServerWorker | undefined,
    archive: RepositoryStorage,
    range: ChangeSetRequest,
    until: number,
  ): Promise<ScannerResponse> {
    for (;;) {
      const r = worker ? await worker.exclusive(() => ensureMbms(archive, range)) : await ensureMbms(archive, range);
      const hopeless = r.errors.length > 0;
      // A stopping daemon answers at once rather than hold STOP up for the rest of the timeout.
      if (r.complete || hopeless || Date.now() >= until || this.stopping) {
        return {
          ok: true,
          op: 'ensure',
          complete: r.complete,
          missingWal: r.missingWal,
          waiting: r.waiting,
          errors: r.errors,
        };
      }
      await new Promise((res) => setTimeout(res, 250));
    }
  }
}
