// Concept: the POSIX storage driver — a repository root on this host's file system (BART's own layout).

import { createReadStream } from 'node:fs';
import { link, lstat, mkdir, open, readdir, rename, rm, unlink, type FileHandle } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { errorMessage, isErrnoError } from '../../util/errors.js';
import { DirectAppender } from '../../util/direct-writer.js';
import { FlushBehind } from '../../util/flush-behind.js';
import { fsyncDir } from '../../util/fs-atomic.js';
import {
  StorageError,
  StorageExistsError,
  StorageNotFoundError,
  checkKey,
  joinKey,
  keyBaseName,
  type CreateOptions,
  type ListOptions,
  type ListPage,
  type ReadRange,
  type RepositoryStorage,
  type StorageWriter,
  type StoredObject,
  putWhole,
} from '../storage.js';
import { forEachLimited } from '../../util/for-each-limited.js';
import { writeAll } from '../../util/write-all.js';

/** Objects a listing page holds at most (a directory of a million archived segments is not one array). */
const PAGE_SIZE = 1000;
/** Files and directories fsynced at once by {@link PosixStorage.syncPrefix}. */
const SYNC_PARALLEL = 16;

/** True for the temporary files of writers under way (`.<name>.tmp-…`): never listed, never read. */
function isTemporaryName(name: string): boolean {
  return name.startsWith('.') && name.includes('.tmp-');
}

/** A file being written: a hidden temporary sibling, renamed (or linked, for ifAbsent) into place on finish. */
class PosixWriter implements StorageWriter {
  private readonly flushBehind: FlushBehind;
  /** Large files go past the page cache once they pass a few MiB (util/direct-writer.ts). */
  private readonly appender: DirectAppender;
  private done = false;

  constructor(
    private readonly storage: PosixStorage,
    private readonly key: string,
    private readonly path: string,
    private readonly tempPath: string,
    private readonly handle: FileHandle,
    private readonly options: CreateOptions,
  ) {
    this.flushBehind = new FlushBehind(handle.fd);
    this.appender = new DirectAppender(handle.fd, async (data, position) => {
      await writeAll(this.handle, data, position);
      this.flushBehind.wrote(data.length);
    });
  }

  async write(data: Uint8Array): Promise<void> {
    try {
      await this.appender.write(data);
    } catch (err) {
      throw this.storage.failure('write', this.key, err);
    }
  }

  async finish(): Promise<void> {
    const durable = this.options.durable ?? true;
    try {
      await this.appender.finish();
      await this.flushBehind.drain();
      if (durable) await this.handle.sync();
      await this.handle.close();
      this.done = true;
      if (this.options.ifAbsent) {
        // link(2) fails with EEXIST when the name is taken: create-if-absent, atomically.
        try {
          await link(this.tempPath, this.path);
        } finally {
          await unlink(this.tempPath).catch(() => undefined);
        }
      } else {
        await rename(this.tempPath, this.path);
      }
      if (durable) await fsyncDir(dirname(this.path));
    } catch (err) {
      await unlink(this.tempPath).catch(() => undefined);
      if (isErrnoError(err) && err.code === 'EEXIST') throw new StorageExistsError(this.storage.location, this.key);
      throw this.storage.failure('finish', this.key, err);
    }
  }

  async abort(): Promise<void> {
    await this.appender.abort();
    await this.flushBehind.drain().catch(() => undefined);
    if (!this.done) await this.handle.close().catch(() => undefined);
    this.done = true;
    await unlink(this.tempPath).catch(() => undefined);
  }
}

/**
 * A repository root on a local (or NFS-mounted) POSIX file system: `backup_path/<server>`. Keys map
 * to paths below it one to one, so the on-disk layout is BART's, and plain backups stay startable in
 * place. Files are written as hidden temporary siblings and renamed into place when complete.
 */
export class PosixStorage implements RepositoryStorage {
  readonly kind = 'posix';
  readonly location: string;

  /** @param root the directory every key is relative to (created on the first write). */
  constructor(readonly root: string) {
    this.location = root;
  }

  /** The absolute path of `key` (or of a prefix, `''` being the root). */
  pathOf(key: string, prefix = false): string {
    checkKey(key, this.location, prefix);
    return key === '' ? this.root : join(this.root, key);
  }

  /** A StorageError for a failed operation on `key`, naming path and cause. */
  failure(what: string, key: string, err: unknown): StorageError {
    if (err instanceof StorageError) return err;
    const code = isErrnoError(err) ? err.code : undefined;
    const error = new StorageError(`cannot ${what} ${joinKey(this.location, key)}: ${errorMessage(err)}`, key);
    // Keeps ENOSPC and friends visible to callers that explain them (a full disk during BACKUP).
    return code !== undefined ? Object.assign(error, { code }) : error;
  }

  async *list(prefix: string, options: ListOptions = {}): AsyncIterable<ListPage> {
    const start = this.pathOf(prefix, true);
    let page: ListPage = { objects: [], prefixes: [] };
    // Depth first over directories; objects are yielded in pages so memory stays bounded.
    const pending: string[] = [prefix];
    while (pending.length > 0) {
      const dirKey = pending.pop()!;
      const dirPath = dirKey === prefix ? start : join(this.root, dirKey);
      let entries;
      try {
        entries = await readdir(dirPath, { withFileTypes: true });
      } catch (err) {
        if (isErrnoError(err) && (err.code === 'ENOENT' || err.code === 'ENOTDIR')) continue;
        throw this.failure('list', dirKey, err);
      }
      for (const entry of entries) {
        if (isTemporaryName(entry.name)) continue;
        const key = joinKey(dirKey, entry.name);
        if (entry.isDirectory()) {
          if (options.shallow) page.prefixes.push(entry.name);
          else pending.push(key);
        } else if (entry.isFile()) {
          const st = await lstat(join(this.root, key)).catch(() => undefined);
          if (st === undefined || !st.isFile()) continue;
          page.objects.push({ key, size: st.size, modified: st.mtime });
        }
        if (page.objects.length + page.prefixes.length >= PAGE_SIZE) {
          yield page;
          page = { objects: [], prefixes: [] };
        }
      }
    }
    if (page.objects.length + page.prefixes.length > 0) yield page;
  }

  async stat(key: string): Promise<StoredObject | undefined> {
    try {
      const st = await lstat(this.pathOf(key));
      return st.isFile() ? { key, size: st.size, modified: st.mtime } : undefined;
    } catch (err) {
      if (isErrnoError(err) && (err.code === 'ENOENT' || err.code === 'ENOTDIR')) return undefined;
      throw this.failure('stat', key, err);
    }
  }

  async read(key: string, range?: ReadRange): Promise<Readable> {
    const path = this.pathOf(key);
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (err) {
      if (isErrnoError(err) && (err.code === 'ENOENT' || err.code === 'ENOTDIR'))
        throw new StorageNotFoundError(this.location, key);
      throw this.failure('read', key, err);
    }
    if (range && range.end <= range.start) {
      await handle.close();
      const { Readable } = await import('node:stream');
      return Readable.from([]);
    }
    return createReadStream('', {
      fd: handle,
      highWaterMark: 1024 * 1024,
      ...(range ? { start: range.start, end: range.end - 1 } : {}),
    });
  }

  async readAll(key: string, maxBytes: number): Promise<Buffer> {
    const path = this.pathOf(key);
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (err) {
      if (isErrnoError(err) && (err.code === 'ENOENT' || err.code === 'ENOTDIR'))
        throw new StorageNotFoundError(this.location, key);
      throw this.failure('read', key, err);
    }
    try {
      const { size } = await handle.stat();
      if (size > maxBytes)
        throw new StorageError(
          `${joinKey(this.location, key)} is ${size} bytes, more than the ${maxBytes} such a file can hold`,
          key,
        );
      return await handle.readFile();
    } catch (err) {
      throw this.failure('read', key, err);
    } finally {
      await handle.close();
    }
  }

  async create(key: string, options: CreateOptions = {}): Promise<StorageWriter> {
    const path = this.pathOf(key);
    const tempPath = join(dirname(path), `.${keyBaseName(key)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
    try {
      await mkdir(dirname(path), { recursive: true, mode: 0o700 });
      return new PosixWriter(this, key, path, tempPath, await open(tempPath, 'wx', 0o600), options);
    } catch (err) {
      throw this.failure('create', key, err);
    }
  }

  put(key: string, data: Uint8Array, options?: CreateOptions): Promise<void> {
    return putWhole(this, key, data, options);
  }

  async remove(key: string): Promise<void> {
    try {
      await unlink(this.pathOf(key));
    } catch (err) {
      if (isErrnoError(err) && err.code === 'ENOENT') return;
      throw this.failure('remove', key, err);
    }
  }

  async removePrefix(prefix: string): Promise<void> {
    const path = this.pathOf(prefix, true);
    if (prefix === '') throw new StorageError(`${this.location}: refusing to remove the whole repository root`, prefix);
    try {
      await rm(path, { recursive: true, force: true });
    } catch (err) {
      throw this.failure('remove', prefix, err);
    }
  }

  async syncPrefix(prefix: string): Promise<void> {
    // fsync every file, then every directory (children before parents), a bounded number at a
    // time. Unlike syncfs(2) this flushes only our own files, not whatever else the file system
    // holds dirty (a busy database next to the catalog would make syncfs take minutes).
    const start = this.pathOf(prefix, true);
    const files: string[] = [];
    const dirs: string[] = [];
    const walk = async (path: string): Promise<void> => {
      dirs.push(path);
      for (const entry of await readdir(path, { withFileTypes: true })) {
        const child = join(path, entry.name);
        if (entry.isDirectory()) await walk(child);
        else if (entry.isFile()) files.push(child);
      }
    };
    try {
      await walk(start);
      await forEachLimited(files, SYNC_PARALLEL, (f) => fsyncPath(f));
      await forEachLimited(dirs.reverse(), SYNC_PARALLEL, (d) => fsyncPath(d));
    } catch (err) {
      throw new StorageError(`could not sync ${start} to disk: ${errorMessage(err)}`, prefix);
    }
  }

  localPath(key: string): string {
    return this.pathOf(key, true);
  }

  async renamePrefix(from: string, to: string): Promise<void> {
    const source = this.pathOf(from);
    const target = this.pathOf(to);
    try {
      await mkdir(dirname(target), { recursive: true, mode: 0o700 });
      await rename(source, target);
      await fsyncDir(dirname(target));
    } catch (err) {
      throw this.failure(`rename to ${to}:`, from, err);
    }
  }

  async close(): Promise<void> {
    // Nothing held open between calls.
  }
}

async function fsyncPath(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
