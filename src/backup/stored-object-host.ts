// Concept: stored objects as a data host — archived WAL read from the repository storage by the ordinary archive writers.

import type { Readable } from 'node:stream';
import type { DataHost, HostEntry, HostFile } from '../hosts/data-host.js';
import type { RepositoryStorage } from '../storage/storage.js';

/**
 * A {@link DataHost} whose "paths" are keys of a repository storage (the WAL archive), so that a
 * backup stores the archived WAL it needs through the same writers as data files, streamed: an
 * object is never loaded whole. Reads front to back follow one stream; a read elsewhere starts a
 * ranged read there.
 */
export class StoredObjectHost implements DataHost {
  readonly description: string;

  constructor(private readonly storage: RepositoryStorage) {
    this.description = storage.location;
  }

  async *walk(root: string): AsyncIterable<HostEntry> {
    const prefixLength = root === '' ? 0 : root.length + 1;
    for await (const page of this.storage.list(root))
      for (const o of page.objects)
        yield {
          path: o.key.slice(prefixLength),
          type: 'file',
          size: o.size,
          mode: 0o600,
          mtimeMs: o.modified.getTime(),
        };
  }

  async open(key: string): Promise<HostFile | undefined> {
    const object = await this.storage.stat(key);
    return object ? new StoredObjectFile(this.storage, key, object.size) : undefined;
  }

  async close(): Promise<void> {}
}

/** One stored object being read; see {@link StoredObjectHost}. */
class StoredObjectFile implements HostFile {
  private stream: Readable | undefined;
  private chunks: AsyncIterator<Buffer> | undefined;
  private rest: Buffer = Buffer.alloc(0);
  /** Object offset of the first byte of {@link rest}. */
  private position = 0;

  constructor(
    private readonly storage: RepositoryStorage,
    private readonly key: string,
    private readonly size: number,
  ) {}

  private async startAt(position: number): Promise<void> {
    this.stream?.destroy();
    this.stream = await this.storage.read(this.key, position > 0 ? { start: position, end: this.size } : undefined);
    this.chunks = (this.stream as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    this.rest = Buffer.alloc(0);
    this.position = position;
  }

  async read(buffer: Buffer, offset: number, length: number, position: number): Promise<number> {
    if (position >= this.size) return 0;
    if (this.chunks === undefined || position !== this.position) await this.startAt(position);
    let done = 0;
    while (done < length) {
      if (this.rest.length === 0) {
        const next = await this.chunks!.next();
        if (next.done) break;
        this.rest = next.value;
      }
      const n = Math.min(length - done, this.rest.length);
      this.rest.copy(buffer, offset + done, 0, n);
      this.rest = this.rest.subarray(n);
      done += n;
    }
    this.position += done;
    return done;
  }

  async close(): Promise<void> {
    this.stream?.destroy();
  }
}
