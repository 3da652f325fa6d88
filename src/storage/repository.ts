import { execFile } from 'node:child_process';
import { open, type FileHandle } from 'node:fs/promises';
import { promisify } from 'node:util';
import { BartError, errorMessage } from '../util/errors.js';

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
  constructor(private readonly handle: FileHandle) {}

  async write(data: Buffer): Promise<void> {
    let offset = 0;
    while (offset < data.length) {
      const { bytesWritten } = await this.handle.write(data, offset, data.length - offset);
      offset += bytesWritten;
    }
  }

  async close(durable = true): Promise<void> {
    if (durable) await this.handle.sync();
    await this.handle.close();
  }

  async abort(): Promise<void> {
    await this.handle.close().catch(() => undefined);
  }
}

/** A repository on a local (or NFS-mounted) POSIX file system. */
export class PosixRepository implements Repository {
  async createOutput(path: string, mode = 0o600): Promise<RepositoryOutput> {
    return new PosixOutput(await open(path, 'wx', mode));
  }

  async syncTree(dir: string): Promise<void> {
    // syncfs(2) through coreutils: one call instead of an fsync per file of a plain backup.
    try {
      await promisify(execFile)('sync', ['-f', dir]);
    } catch (err) {
      throw new BartError(`could not sync ${dir} to disk: ${errorMessage(err)}`);
    }
  }
}
