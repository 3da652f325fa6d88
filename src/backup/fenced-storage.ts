// Concept: a fenced storage — a backup's view of the repository that an interruption closes to writes before cleaning up.

import type { Readable } from 'node:stream';
import {
  StorageError,
  type CreateOptions,
  type ListOptions,
  type ListPage,
  type ReadRange,
  type RepositoryStorage,
  type StorageWriter,
  type StoredObject,
} from '../storage/storage.js';

/**
 * Wraps the storage a backup writes to. On Ctrl-C/SIGTERM the cleanup runs asynchronously (an S3
 * removal cannot be synchronous) while the backup body is still running: without a fence, a writer
 * could complete an object after the cleanup listed and removed the prefix, leaving part of a
 * backup behind. After {@link fence}, no object is created or completed any more (writers abort
 * instead), and {@link fence} resolves once the completions already under way have settled, so
 * that a removal started after it sees everything that was ever written.
 */
export class FencedStorage implements RepositoryStorage {
  readonly kind: 'posix' | 's3';
  readonly location: string;
  readonly renamePrefix?: (from: string, to: string) => Promise<void>;
  private fenced = false;
  private readonly inFlight = new Set<Promise<unknown>>();

  constructor(private readonly inner: RepositoryStorage) {
    this.kind = inner.kind;
    this.location = inner.location;
    if (inner.renamePrefix) this.renamePrefix = (from, to) => this.guard(() => inner.renamePrefix!(from, to), from);
  }

  /** Closes the storage to writes; resolves when the writes under way have finished or failed. */
  async fence(): Promise<void> {
    this.fenced = true;
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  /** Runs a write unless fenced, tracking it so that {@link fence} can wait for it. */
  private async guard<T>(op: () => Promise<T>, key: string): Promise<T> {
    if (this.fenced) throw new StorageError(`${this.location}: the backup was interrupted; not writing ${key}`, key);
    const p = op();
    this.inFlight.add(p);
    try {
      return await p;
    } finally {
      this.inFlight.delete(p);
    }
  }

  list(prefix: string, options?: ListOptions): AsyncIterable<ListPage> {
    return this.inner.list(prefix, options);
  }

  stat(key: string): Promise<StoredObject | undefined> {
    return this.inner.stat(key);
  }

  read(key: string, range?: ReadRange): Promise<Readable> {
    return this.inner.read(key, range);
  }

  readAll(key: string, maxBytes: number): Promise<Buffer> {
    return this.inner.readAll(key, maxBytes);
  }

  async create(key: string, options?: CreateOptions): Promise<StorageWriter> {
    const writer = await this.guard(() => this.inner.create(key, options), key);
    return {
      write: (data) => writer.write(data),
      finish: async () => {
        if (this.fenced) {
          await writer.abort();
          throw new StorageError(`${this.location}: the backup was interrupted; not completing ${key}`, key);
        }
        await this.guard(() => writer.finish(), key);
      },
      abort: () => writer.abort(),
    };
  }

  async put(key: string, data: Uint8Array, options?: CreateOptions): Promise<void> {
    await this.guard(() => this.inner.put(key, data, options), key);
  }

  remove(key: string): Promise<void> {
    return this.inner.remove(key);
  }

  removePrefix(prefix: string): Promise<void> {
    return this.inner.removePrefix(prefix);
  }

  syncPrefix(prefix: string): Promise<void> {
    return this.inner.syncPrefix(prefix);
  }

  localPath(key: string): string | undefined {
    return this.inner.localPath(key);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
