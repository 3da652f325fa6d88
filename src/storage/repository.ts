// Repository: the driver where backups are stored, POSIX files with durable writes.

import { open, readdir, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { BartError, errorMessage } from '../util/errors.js';
import { FlushBehind } from '../util/flush-behind.js';

/** A file being written into the backup repository. */
export interface RepositoryOutput {
  write(data: Buffer): Promise<void>;
  /**
   * Closes the file. With `durable` (the default) it is fsynced first; callers that write many
   * small files pass false and call {@link Repository.syncTree} once at the end instead.
   */
  close(durable?: boolean): Promise<void>;
  /** Closes without syncing (after a failure). */
  abort(): Promise<void>;
}

/**
 * The repository driver: where backups are stored. POSIX files now; object storage can implement
 * the same interface later.
 */
export interface Repository {
  createOutput(path: string, mode?: number): Promise<RepositoryOutput>;
  /** Makes everything written under `dir` durable (files and directory entries). */
  syncTree(dir: string): Promise<void>;
}

class PosixOutput implements RepositoryOutput {
  private readonly flushBehind: FlushBehind;

  constructor(private readonly handle: FileHandle) {
    this.flushBehind = new FlushBehind(handle.fd);
  }

  async write(data: Buffer): Promise<void> {
    let offset = 0;
    while (offset < data.length) {
      const { bytesWritten } = await this.handle.write(data, offset, data.length - offset);
      offset += bytesWritten;
    }
    await this.flushBehind.wrote(data.length);
  }

  async close(durable = true): Promise<void> {
    await this.flushBehind.drain();
    if (durable) await this.handle.sync();
    await this.handle.close();
  }

  async abort(): Promise<void> {
    await this.flushBehind.drain();
    await this.handle.close().catch(() => undefined);
  }
}

/** A repository on a local (or NFS-mounted) POSIX file system. */
export class PosixRepository implements Repository {
  async createOutput(path: string, mode = 0o600): Promise<RepositoryOutput> {
    return new PosixOutput(await open(path, 'wx', mode));
  }

  async syncTree(dir: string): Promise<void> {
    // fsync every file, then every directory (children before parents), a bounded number at a
    // time. Unlike syncfs(2) this flushes only our own files, not whatever else the file system
    // holds dirty (a busy database next to the catalog would make syncfs take minutes).
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
      await walk(dir);
      await forEachLimited(files, 16, (f) => fsyncPath(f, 'r'));
      await forEachLimited(dirs.reverse(), 16, (d) => fsyncPath(d, 'r'));
    } catch (err) {
      throw new BartError(`could not sync ${dir} to disk: ${errorMessage(err)}`);
    }
  }
}

async function fsyncPath(path: string, flags: string): Promise<void> {
  const handle = await open(path, flags);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Runs `fn` over `items` with at most `limit` calls in flight. */
export async function forEachLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
}
