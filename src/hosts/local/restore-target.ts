// Restore target (local driver): RESTORE writing to this host through direct file access.

import { execFile } from 'node:child_process';
import { closeSync, fchownSync, fstatSync, fsyncSync, ftruncateSync, openSync } from 'node:fs';
import {
  access,
  chmod,
  chown,
  lchown,
  lstat,
  mkdir,
  open,
  readFile,
  readdir,
  rename,
  rm,
  stat,
  statfs,
  symlink,
  writeFile,
  constants,
} from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { isErrnoError } from '../../util/errors.js';
import { fsyncDir } from '../../util/fs-atomic.js';
import { FlushBehind } from '../../util/flush-behind.js';
import { LocalHost } from './data-host.js';
import type {
  FileToCompare,
  FreeSpace,
  PathState,
  RestoreTarget,
  RestoreTargetSpec,
  TargetEntry,
  TargetFilePatcher,
  TargetFileState,
  TargetFileWriter,
} from '../restore-target.js';
import { forEachLimited } from '../../util/for-each-limited.js';
import { writeAll, writeAllSync } from '../../util/write-all.js';
import { DirectAppender } from '../../util/direct-writer.js';
import { createFileHash, type FileHashName } from '../../util/file-hash.js';

/** Files hashed at once by compareFiles: enough to keep a disk busy, few enough to keep memory flat. */
const COMPARE_CONCURRENCY = 4;

/**
 * Create or overwrite for writing, refusing (ELOOP) a symlink in the file's place. Not O_TRUNC: an
 * existing file (a chain link's whole file, a delta restore's changed one) is overwritten in place and
 * cut to what was written when it is finished. Truncating waited for the writeback of the pages the
 * previous link had just written, once per file and link.
 */
const WRITE_NO_FOLLOW = constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW;

function missing(err: unknown): boolean {
  return isErrnoError(err) && (err.code === 'ENOENT' || err.code === 'ENOTDIR');
}

/** Nearest existing ancestor of `path` (the path itself when it exists). */
async function existingAncestor(path: string): Promise<string> {
  let dir = path;
  for (;;) {
    try {
      await stat(dir);
      return dir;
    } catch (err) {
      if (!missing(err)) throw err;
    }
    const parent = dirname(dir);
    if (parent === dir) return dir;
    dir = parent;
  }
}

/**
 * A file written with synchronous calls: restore workers run in their own threads, where a
 * blocking write costs nothing and saves a thread-pool round trip per chunk.
 */
class LocalFileWriter implements TargetFileWriter {
  private readonly flushBehind: FlushBehind;
  /** Files past a few MiB are written past the page cache (util/direct-writer.ts), the rest as before. */
  private readonly appender: DirectAppender;
  /** Bytes written so far: the file's length when it is finished. */
  private written = 0;

  constructor(private fd: number | undefined) {
    const flushBehind = (this.flushBehind = new FlushBehind(fd!));
    this.appender = new DirectAppender(fd!, async (data, position) => {
      writeAllSync(fd!, data, position);
      flushBehind.wrote(data.length);
    });
  }

  async write(chunk: Uint8Array): Promise<void> {
    await this.appender.write(chunk);
    this.written += chunk.length;
  }

  async finish(): Promise<void> {
    const fd = this.fd!;
    this.fd = undefined;
    try {
      await this.appender.finish();
      await this.flushBehind.drain();
      // The file may have been longer (opened without O_TRUNC): cut what the old content left past the new.
      if (fstatSync(fd).size !== this.written) ftruncateSync(fd, this.written);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    // No fsync here: one syncfs per file system at the end (syncTree) is far cheaper than one per file.
    closeSync(fd);
  }

  async abort(): Promise<void> {
    if (this.fd === undefined) return;
    const fd = this.fd;
    this.fd = undefined;
    // Aborting: a failed background flush does not matter for a file that is being given up.
    await this.appender.abort();
    await this.flushBehind.drain().catch(() => undefined);
    try {
      closeSync(fd);
    } catch {
      /* already closed */
    }
  }
}

/** Restores onto this host's file systems. */
export class LocalRestoreTarget implements RestoreTarget {
  readonly description = 'local';
  readonly spec: Extract<RestoreTargetSpec, { kind: 'local' }>;

  constructor(owner?: { uid: number; gid: number }) {
    this.spec = { kind: 'local', ...(owner ? { owner } : {}) };
  }

  async inspect(path: string): Promise<PathState> {
    let st;
    try {
      st = await stat(path);
    } catch (err) {
      if (missing(err)) return { kind: 'absent', existingParent: await existingAncestor(dirname(path)) };
      throw err;
    }
    if (!st.isDirectory()) return { kind: 'not-directory' };
    const names = await readdir(path);
    if (names.length === 0) return { kind: 'empty', mode: st.mode & 0o7777 };
    return { kind: 'not-empty', sample: names.sort()[0]! };
  }

  async writable(dir: string): Promise<boolean> {
    try {
      await access(dir, constants.W_OK | constants.X_OK);
      return true;
    } catch {
      return false;
    }
  }

  async freeSpace(path: string): Promise<FreeSpace> {
    const at = await existingAncestor(path);
    const [fs, st] = await Promise.all([statfs(at), stat(at)]);
    return { measuredAt: at, device: String(st.dev), freeBytes: fs.bavail * fs.bsize };
  }

  async makeDir(path: string, mode: number): Promise<void> {
    await mkdir(path, { recursive: true, mode });
    if (this.spec.owner) await chown(path, this.spec.owner.uid, this.spec.owner.gid);
  }

  async chmod(path: string, mode: number): Promise<void> {
    await chmod(path, mode);
  }

  async writeFile(path: string, data: string, mode: number): Promise<void> {
    await writeFile(path, data, { mode });
    await chmod(path, mode); // an existing file keeps its mode otherwise
    if (this.spec.owner) await chown(path, this.spec.owner.uid, this.spec.owner.gid);
  }

  async readFile(path: string): Promise<string | undefined> {
    try {
      return await readFile(path, 'utf8');
    } catch (err) {
      if (missing(err)) return undefined;
      throw err;
    }
  }

  /** Files are opened with O_NOFOLLOW: a restore never writes through a symlink it finds in place of a file. */
  async openWriter(path: string, mode: number): Promise<TargetFileWriter> {
    let fd: number;
    try {
      fd = openSync(path, WRITE_NO_FOLLOW, mode);
    } catch (err) {
      if (!missing(err)) throw err;
      // A parent directory that the manifest listed later (or another worker has not made yet).
      await mkdir(dirname(path), { recursive: true, mode: 0o700 });
      fd = openSync(path, WRITE_NO_FOLLOW, mode);
    }
    if (this.spec.owner) fchownSync(fd, this.spec.owner.uid, this.spec.owner.gid);
    return new LocalFileWriter(fd);
  }

  async openPatcher(path: string, length: number): Promise<TargetFilePatcher | undefined> {
    let handle;
    try {
      handle = await open(path, constants.O_RDWR | constants.O_NOFOLLOW);
    } catch (err) {
      if (missing(err)) return undefined;
      throw err;
    }
    try {
      // Shrink (a truncated relation) or extend with zeros (overwritten where blocks are stored).
      await handle.truncate(length);
    } catch (err) {
      await handle.close();
      throw err;
    }
    const h = handle;
    return {
      write: async (data, position) => {
        await writeAll(h, data, position);
      },
      finish: () => h.close(),
      abort: () => h.close().catch(() => undefined),
    };
  }

  async flush(): Promise<void> {
    // Writes and patches here take effect at once.
  }

  async *walk(root: string): AsyncIterable<TargetEntry> {
    yield* new LocalHost().walk(root);
  }

  async symlink(linkTarget: string, path: string): Promise<void> {
    await symlink(linkTarget, path);
    if (this.spec.owner) await lchown(path, this.spec.owner.uid, this.spec.owner.gid);
  }

  async rename(from: string, to: string): Promise<void> {
    await rename(from, to);
  }

  async remove(path: string): Promise<void> {
    await rm(path, { recursive: true, force: true });
  }

  async emptyDir(path: string): Promise<void> {
    let names: string[];
    try {
      names = await readdir(path);
    } catch (err) {
      if (missing(err)) return;
      throw err;
    }
    for (const name of names) await rm(join(path, name), { recursive: true, force: true });
  }

  async compareFiles(
    root: string,
    files: FileToCompare[],
    hash: FileHashName | 'none',
  ): Promise<Map<string, TargetFileState>> {
    const out = new Map<string, TargetFileState>();
    const one = async (f: FileToCompare): Promise<void> => {
      let handle;
      try {
        // O_NOFOLLOW: a symlink in a file's place is not a file of the cluster (it will be replaced).
        handle = await open(join(root, f.path), constants.O_RDONLY | constants.O_NOFOLLOW);
      } catch (err) {
        if (missing(err) || (isErrnoError(err) && (err.code === 'ELOOP' || err.code === 'EISDIR'))) return;
        throw err;
      }
      try {
        const st = await handle.stat();
        if (!st.isFile()) return;
        const state: TargetFileState = { size: st.size, mode: st.mode & 0o7777 };
        if (hash !== 'none' && st.size === f.size) {
          const h = createFileHash(hash);
          // Streamed: relation segments are up to 1 GiB.
          for await (const chunk of handle.createReadStream({ autoClose: false, highWaterMark: 1024 * 1024 })) {
            h.update(chunk as Buffer);
          }
          state.digest = h.digest('hex');
        }
        out.set(f.path, state);
      } finally {
        await handle.close();
      }
    };
    await forEachLimited(files, COMPARE_CONCURRENCY, one);
    return out;
  }

  async readHead(path: string, length: number): Promise<Buffer | undefined> {
    let handle;
    try {
      handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
    } catch (err) {
      // A symlink (ELOOP) or a directory in the file's place is not the file either.
      if (missing(err) || (isErrnoError(err) && (err.code === 'ELOOP' || err.code === 'EISDIR'))) return undefined;
      throw err;
    }
    try {
      const buf = Buffer.alloc(length);
      const { bytesRead } = await handle.read(buf, 0, length, 0);
      return buf.subarray(0, bytesRead);
    } finally {
      await handle.close();
    }
  }

  async processAlive(pid: number): Promise<boolean> {
    try {
      process.kill(pid, 0);
      return true;
    } catch (err) {
      // EPERM: it exists but belongs to another user (the postmaster runs as cluster_owner).
      return !(isErrnoError(err) && err.code === 'ESRCH');
    }
  }

  async chownTree(path: string, uid: number, gid: number): Promise<void> {
    const st = await lstat(path);
    await lchown(path, uid, gid);
    if (!st.isDirectory()) return;
    for (const name of await readdir(path)) await this.chownTree(join(path, name), uid, gid);
  }

  async syncDir(path: string): Promise<void> {
    await fsyncDir(path);
  }

  async syncTree(path: string): Promise<void> {
    // coreutils `sync -f` is syncfs(2): one call flushes the whole file system, as PostgreSQL's
    // recovery_init_sync_method = syncfs does. Without it, fsync file by file.
    const viaSyncfs = await new Promise<boolean>((resolvePromise) => {
      execFile('sync', ['-f', path], (err) => resolvePromise(!err));
    });
    if (!viaSyncfs) await this.fsyncWalk(path);
  }

  private async fsyncWalk(path: string): Promise<void> {
    const st = await lstat(path);
    if (st.isSymbolicLink()) return;
    if (st.isDirectory()) {
      for (const name of await readdir(path)) await this.fsyncWalk(join(path, name));
      await fsyncDir(path);
      return;
    }
    const fd = openSync(path, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }
}
