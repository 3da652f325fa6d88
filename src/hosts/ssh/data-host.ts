// Data host (ssh driver): a data directory on remote_host, listed with find or stat and read over ssh.

import { posix } from 'node:path';
import { BartError } from '../../util/errors.js';
import { log } from '../../util/log.js';
import { relativePathProblem } from '../../util/untrusted-path.js';
import type { DataHost, HostEntry, HostFile, OpenOptions } from '../data-host.js';
import { SshChannel } from './channel.js';
import { remoteWord, SshSession, type SshDestination } from './session.js';

/**
 * Channels open at most at once: below sshd's default MaxSessions (10) per connection, leaving room
 * for one-shot commands; plain backups read `threads * 2` files at once and wait for a channel.
 */
const MAX_CHANNELS = 8;

/** Files up to this size are prefetched together (most files of a data directory are small). */
const SMALL_FILE = 128 * 1024;
/** One prefetch: at most this many files and bytes (bounds memory). */
const BATCH_FILES = 200;
const BATCH_BYTES = 4 * 1024 * 1024;

/** Lists a tree: GNU find prints type, mode, size, mtime, relative path, then the link target, NUL-separated. */
function findCommand(root: string): string {
  return `find -H ${remoteWord(root)} -mindepth 1 -printf '%y %m %s %T@ %P\\0%l\\0'`;
}

/**
 * The same listing without GNU find's -printf (BusyBox, BSD): `stat` in batches (GNU/BusyBox `-c`,
 * else BSD `-f`), raw mode in hex so the type comes with it; symlink targets are read afterwards.
 */
function portableListCommand(root: string): string {
  const r = remoteWord(root);
  return `find -H ${r} -mindepth 1 -exec stat -c '%f %s %Y %n' {} + 2>/dev/null || find -H ${r} -mindepth 1 -exec stat -f '%Xp %z %m %N' {} +`;
}

/** Orders paths as a depth-first walk with names sorted per directory (as {@link LocalHost} walks). */
export function walkOrder(a: string, b: string): number {
  const x = a.replace(/\//g, '\0');
  const y = b.replace(/\//g, '\0');
  return x < y ? -1 : x > y ? 1 : 0;
}

function entryType(y: string): HostEntry['type'] | undefined {
  return y === 'f' ? 'file' : y === 'd' ? 'dir' : y === 'l' ? 'symlink' : undefined;
}

/** Parses GNU find's NUL-framed listing of a tree (paths relative to the root). */
export function parseFindListing(out: Buffer): HostEntry[] {
  const fields = out.toString('utf8').split('\0');
  const entries: HostEntry[] = [];
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const head = fields[i]!;
    const m = /^(\S) (\d+) (\d+) (\d+(?:\.\d+)?) (.*)$/s.exec(head);
    if (!m) throw new BartError(`unexpected directory listing line from the database host: "${head.slice(0, 80)}"`);
    const [, y, mode, size, mtime, path] = m as unknown as [string, string, string, string, string, string];
    const type = entryType(y);
    if (!type) continue; // sockets, fifos and devices are not part of a backup
    entries.push({
      path,
      type,
      size: type === 'file' ? Number(size) : 0,
      mode: parseInt(mode, 8) & 0o7777,
      mtimeMs: Math.round(Number(mtime) * 1000),
      ...(type === 'symlink' ? { linkTarget: fields[i + 1]! } : {}),
    });
  }
  return entries.sort((a, b) => walkOrder(a.path, b.path));
}

/** Parses the portable listing (`RAWMODE_HEX SIZE MTIME PATH` lines); symlink targets still empty. */
export function parseStatListing(out: Buffer, root: string): HostEntry[] {
  const entries: HostEntry[] = [];
  const prefix = root.endsWith('/') ? root : root + '/';
  for (const line of out.toString('utf8').split('\n')) {
    const m = /^([0-9a-fA-F]+) (\d+) (\d+) (.*)$/s.exec(line);
    if (!m || !m[4]!.startsWith(prefix)) continue;
    const raw = parseInt(m[1]!, 16);
    const fmt = raw & 0o170000;
    const type = fmt === 0o100000 ? 'file' : fmt === 0o040000 ? 'dir' : fmt === 0o120000 ? 'symlink' : undefined;
    if (!type) continue;
    entries.push({
      path: m[4]!.slice(prefix.length),
      type,
      size: type === 'file' ? Number(m[2]) : 0,
      mode: raw & 0o7777,
      mtimeMs: Number(m[3]) * 1000,
    });
  }
  return entries.sort((a, b) => walkOrder(a.path, b.path));
}

/** Does stderr of a listing hold only "vanished while we looked" complaints? */
function onlyVanished(stderr: string): boolean {
  return stderr.split('\n').every((l) => l.trim() === '' || /No such file or directory/.test(l));
}

/**
 * A data directory on another host, read as `cluster_owner` over one ssh connection: directories
 * are listed with `find` (or a portable fallback), files are streamed by long-lived remote shells,
 * one per file being read, reused from file to file. Nothing but sh and standard tools is needed
 * on the database host.
 */
export class SshDataHost implements DataHost {
  readonly description: string;
  private readonly idle: SshChannel[] = [];
  private readonly all = new Set<SshChannel>();
  private readonly waiting: ((c: SshChannel | Error) => void)[] = [];
  private opening = 0;
  private gnuFind: boolean | undefined;
  private closed = false;
  /** Small files in walk order (absolute paths) with their listed sizes: what to prefetch next. */
  private readonly smallFiles: { path: string; size: number }[] = [];
  private readonly smallIndex = new Map<string, number>();
  /** Prefetched contents waiting for open(), and batches still arriving. */
  private readonly prefetched = new Map<string, Buffer>();
  private readonly arriving = new Map<string, Promise<void>>();
  /** For the debug summary: how files were fetched. */
  private readonly stats = { batches: 0, batchedFiles: 0, single: 0, random: 0, ranges: 0 };

  private constructor(
    private readonly session: SshSession,
    private readonly forcePortable: boolean,
  ) {
    this.description = session.destination;
  }

  /** Connects to `user@host`; throws a BartError with the fix when ssh cannot log in. */
  static async connect(target: SshDestination, opts: { portableListing?: boolean } = {}): Promise<SshDataHost> {
    return new SshDataHost(await SshSession.open(target), opts.portableListing === true);
  }

  private async acquire(): Promise<SshChannel> {
    if (this.closed) throw new BartError(`the connection to ${this.description} is closed`);
    const ready = this.idle.pop();
    if (ready) return ready;
    if (this.all.size + this.opening < MAX_CHANNELS) {
      this.opening++;
      try {
        const c = await SshChannel.open(this.session);
        this.all.add(c);
        return c;
      } finally {
        this.opening--;
      }
    }
    return new Promise<SshChannel>((resolvePromise, reject) => {
      this.waiting.push((c) => (c instanceof Error ? reject(c) : resolvePromise(c)));
    });
  }

  private release(c: SshChannel): void {
    if (c.broken || this.closed) {
      this.all.delete(c);
      c.close();
      // A waiter gets a fresh channel instead.
      const w = this.waiting.shift();
      if (w) this.acquire().then(w, (e: Error) => w(e));
      return;
    }
    const w = this.waiting.shift();
    if (w) w(c);
    else this.idle.push(c);
  }

  /** Lists a whole tree in one request (one `find` on the database host, however many files). */
  private async listTree(root: string): Promise<HostEntry[]> {
    const c = await this.acquire();
    try {
      if (this.gnuFind === undefined) {
        const probe = await c.run('find /dev/null -maxdepth 0 -printf x');
        this.gnuFind = !this.forcePortable && probe.code === 0 && probe.stdout.toString() === 'x';
      }
      const r = await c.run(this.gnuFind ? findCommand(root) : portableListCommand(root));
      if (r.code !== 0 && !onlyVanished(r.stderr)) {
        const why =
          r.stderr
            .trim()
            .split('\n')
            .find((l) => !/No such file or directory/.test(l)) ?? `exit ${r.code}`;
        throw new BartError(
          `cannot list "${root}" on ${this.description}: ${why}${/Permission denied/.test(why) ? ' (the data directory must be readable by cluster_owner)' : ''}`,
        );
      }
      if (this.gnuFind) return parseFindListing(r.stdout);
      const entries = parseStatListing(r.stdout, root);
      for (const e of entries.filter((x) => x.type === 'symlink')) {
        const l = await c.run(`readlink ${remoteWord(`${root}/${e.path}`)}`);
        if (l.code === 0) e.linkTarget = l.stdout.toString().replace(/\n$/, '');
      }
      return entries.filter((e) => e.type !== 'symlink' || e.linkTarget !== undefined);
    } finally {
      this.release(c);
    }
  }

  async *walk(root: string): AsyncIterable<HostEntry> {
    const stripped = root.length > 1 ? root.replace(/\/+$/, '') : root;
    // A listing is metadata only (~100 bytes a file); the walk order is the local walker's.
    const entries = await this.listTree(stripped);
    for (const e of entries) {
      // Prefetching runs ahead of the caller's checks (checkedWalk): a path it would refuse is never
      // fetched, or the batch fails first with a message that names neither the entry nor the host.
      if (e.type !== 'file' || e.size > SMALL_FILE || relativePathProblem(e.path)) continue;
      const path = posix.join(stripped, e.path);
      this.smallIndex.set(path, this.smallFiles.length);
      this.smallFiles.push({ path, size: e.size });
    }
    yield* entries;
  }

  /** Fetches the small files from `path` on in walk order with one remote tar. */
  private async prefetch(path: string): Promise<void> {
    const first = this.smallIndex.get(path);
    if (first === undefined) return;
    const batch: string[] = [];
    let bytes = 0;
    for (let i = first; i < this.smallFiles.length && batch.length < BATCH_FILES && bytes < BATCH_BYTES; i++) {
      const f = this.smallFiles[i]!;
      if (!this.smallIndex.has(f.path) || this.prefetched.has(f.path) || this.arriving.has(f.path)) continue;
      batch.push(f.path);
      bytes += f.size;
    }
    if (batch.length === 0) return;
    const done = (async () => {
      const c = await this.acquire();
      try {
        this.stats.batches++;
        for (const [p, data] of await c.readBatch(batch, SMALL_FILE * 8)) {
          this.prefetched.set(p, data);
          this.stats.batchedFiles++;
        }
      } catch (err) {
        c.broken = true;
        throw err;
      } finally {
        this.release(c);
      }
    })();
    for (const p of batch) this.arriving.set(p, done);
    try {
      await done;
    } finally {
      for (const p of batch) if (this.arriving.get(p) === done) this.arriving.delete(p);
    }
  }

  /** A prefetched file, served from memory. */
  private bufferedFile(data: Buffer): HostFile {
    return {
      read: async (buffer, offset, length, position) => {
        if (position >= data.length) return 0;
        return data.copy(buffer, offset, position, Math.min(data.length, position + length));
      },
      close: async () => undefined,
    };
  }

  async open(path: string, opts: OpenOptions = {}): Promise<HostFile | undefined> {
    if (opts.random) return this.openRandom(path);
    if (this.smallIndex.has(path)) {
      const coming = this.arriving.get(path);
      if (coming) await coming;
      else if (!this.prefetched.has(path)) await this.prefetch(path);
      const data = this.prefetched.get(path);
      this.prefetched.delete(path);
      this.smallIndex.delete(path);
      if (data) return this.bufferedFile(data);
      // Not in the batch (vanished, or changed type): ask for it alone below.
    }
    this.stats.single++;
    const c = await this.acquire();
    let released = false;
    const done = () => {
      if (!released) {
        released = true;
        this.release(c);
      }
    };
    let opened;
    try {
      opened = await c.readFile(path);
    } catch (err) {
      done();
      throw err;
    }
    if (!opened) {
      done();
      return undefined;
    }
    const { stream } = opened;
    let position = 0;
    return {
      // The engine reads front to back, so the remote file is streamed once, in order; a short
      // stream (the file shrank since the walk) ends early and the engine pads, as it does locally.
      read: async (buffer, offset, length, pos) => {
        try {
          if (pos !== position)
            throw new BartError(
              `internal error: "${path}" read at byte ${pos}, but files from ${this.description} stream in order (at ${position})`,
            );
          const n = await stream.read(buffer, offset, length);
          position += n;
          return n;
        } catch (err) {
          c.broken = true;
          done();
          throw err;
        }
      },
      close: async () => {
        try {
          if (!released) await stream.finish();
        } catch {
          c.broken = true;
        } finally {
          done();
        }
      },
    };
  }

  /**
   * A file read at jumping positions: each read fetches its range (changed blocks only cross the
   * network). Nothing is asked at open: an incremental backup opens every relation file, most
   * without a changed block to read. A vanished file reads as zeros, as the engine treats one.
   */
  private async openRandom(path: string): Promise<HostFile | undefined> {
    this.stats.random++;
    return {
      read: async (buffer, offset, length, position) => {
        this.stats.ranges++;
        const c = await this.acquire();
        try {
          await c.readRange(path, buffer, offset, length, position);
          return length;
        } catch (err) {
          c.broken = true;
          throw err;
        } finally {
          this.release(c);
        }
      },
      close: async () => undefined,
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const st = this.stats;
    log.debug(
      `ssh ${this.description}: ${st.batchedFiles} small files in ${st.batches} batches, ${st.single} files one by one, ${st.random} files read by ranges (${st.ranges} ranges), ${this.all.size} channels`,
    );
    for (const w of this.waiting.splice(0)) w(new BartError(`the connection to ${this.description} is closed`));
    for (const c of this.all) c.close();
    this.prefetched.clear();
    this.all.clear();
    this.idle.length = 0;
    await this.session.close();
  }
}
