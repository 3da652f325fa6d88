// Concept: the encrypting storage — a RepositoryStorage that encrypts every object on the BART host before another driver stores it.

import { open } from 'node:fs/promises';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { errorMessage, isErrnoError } from '../../util/errors.js';
import {
  StorageError,
  StorageNotFoundError,
  joinKey,
  type CreateOptions,
  type ListOptions,
  type ListPage,
  type ReadRange,
  type RepositoryStorage,
  type StorageWriter,
  type StoredObject,
  putWhole,
} from '../storage.js';
import {
  HEADER_BYTES,
  TAG_BYTES,
  associatedData,
  ChunkOpener,
  lastChunkIndex,
  newObjectHeader,
  chunkCutShort,
  chunkNotAuthentic,
  objectShape,
  plainSize,
  sealChunkInPlace,
  storedSize,
  type ObjectHeader,
} from './cipher-format.js';
import { WorkerPool } from '../../util/worker-pool.js';
import { CipherFileReader } from './cipher-file.js';
import { PosixStorage } from '../posix/posix-storage.js';
import { CIPHER_KEY_OBJECT, openRepositoryKey, type CipherSettings, type RepositoryKey } from './cipher-key.js';
import type { SealResult, SealTask } from './seal-worker.js';

/** A POSIX encrypted repository as a worker thread opens it ({@link CipherStorage.workerSource}). */
export interface CipherWorkerSource {
  /** The repository root directory (PosixStorage root). */
  root: string;
  /** The master key (a Uint8Array once it has crossed to a worker). */
  master: Uint8Array;
  /** log2 of the repository's chunk size. */
  chunkLog2: number;
}

/** The storage a worker thread reads a {@link CipherWorkerSource} through. */
export function openWorkerSource(source: CipherWorkerSource): CipherStorage {
  const master = Buffer.from(source.master.buffer, source.master.byteOffset, source.master.byteLength);
  return CipherStorage.withKey(new PosixStorage(source.root), {
    master,
    chunkLog2: source.chunkLog2,
    chunkSize: 2 ** source.chunkLog2,
  });
}

/** Headers and sizes of objects read lately (ranged reads of one object come in many calls). */
const HEADER_CACHE_ENTRIES = 256;

/**
 * Chunks of one object sealed on the calling thread before the rest go to the sealing worker: small objects
 * (backupinfo, manifests, a 16 MiB WAL segment) never wait for a thread to start; a tar archive does its AES-GCM
 * work beside the main thread, which reads, hashes and writes the backup.
 */
const SEAL_HERE_CHUNKS = 32;
/** Chunks of one object being sealed in the worker at a time (memory: this many chunks, twice). */
const SEALS_IN_FLIGHT = 4;

let sealPool: WorkerPool<SealResult> | undefined;
let sealsRunning = 0;
let keepAlive: NodeJS.Timeout | undefined;

/**
 * Seals a chunk in the process's sealing worker (one thread, started on first use). Its threads are unref'd, so
 * while a seal is under way a timer keeps the process alive: a command that only waits for it must not exit.
 */
function sealInWorker(task: SealTask): Promise<SealResult> {
  sealPool ??= new WorkerPool<SealResult>(new URL('./seal-worker.js', import.meta.url), 1);
  if (sealsRunning++ === 0) keepAlive = setInterval(() => undefined, 60_000);
  return sealPool.run(task, [task.chunk.buffer as ArrayBuffer]).finally(() => {
    if (--sealsRunning === 0) clearInterval(keepAlive);
  });
}

/** Writes sealed chunks to the inner writer; keeps the last full chunk back until it knows whether more follows. */
class EncryptingWriter implements StorageWriter {
  /**
   * The chunk being filled: its plaintext, then room for its tag, so that the sealed chunk (ciphertext and tag, as
   * stored) goes to the inner writer in one write.
   */
  private chunk: Buffer;
  private filled = 0;
  private index = 0;
  private headerWritten = false;
  /** Chunks being sealed in the worker, oldest first (written in this order). */
  private readonly sealing: Promise<Buffer>[] = [];
  /** Chunk buffers sealed in the worker and written since, for reuse (fresh memory costs more than the AES work). */
  private readonly spare: Buffer[] = [];
  /** The associated data in an ArrayBuffer of its own: a message to the worker copies only its bytes. */
  private readonly ownAad: Uint8Array;

  constructor(
    private readonly inner: StorageWriter,
    private readonly header: ObjectHeader,
    private readonly aad: Buffer,
  ) {
    // A buffer of its own (not a slice of Node's pool), so it can be transferred to the sealing worker.
    this.chunk = Buffer.allocUnsafeSlow(header.chunkSize + TAG_BYTES);
    this.ownAad = new Uint8Array(aad);
  }

  async write(data: Uint8Array): Promise<void> {
    if (!this.headerWritten) {
      this.headerWritten = true;
      await this.inner.write(this.header.bytes);
    }
    const size = this.header.chunkSize;
    let offset = 0;
    while (offset < data.length) {
      if (this.filled === size) {
        // More data after a full chunk: that chunk is not the last one.
        await this.sealFull();
        this.filled = 0;
      }
      const n = Math.min(data.length - offset, size - this.filled);
      this.chunk.set(data.subarray(offset, offset + n), this.filled);
      this.filled += n;
      offset += n;
    }
  }

  async finish(): Promise<void> {
    if (!this.headerWritten) {
      this.headerWritten = true;
      await this.inner.write(this.header.bytes);
    }
    while (this.sealing.length > 0) await this.writeOldest();
    await this.seal(true, this.filled);
    await this.inner.finish();
  }

  async abort(): Promise<void> {
    await Promise.allSettled(this.sealing.splice(0));
    await this.inner.abort();
  }

  /** Seals the full chunk (not the last): here for the first chunks of an object, then in the worker. */
  private async sealFull(): Promise<void> {
    const size = this.header.chunkSize;
    if (this.index < SEAL_HERE_CHUNKS) return this.seal(false, size);
    const chunk = this.chunk;
    this.chunk = this.spare.pop() ?? Buffer.allocUnsafeSlow(size + TAG_BYTES);
    const task: SealTask = {
      key: this.header.key,
      aad: this.ownAad,
      index: this.index++,
      last: false,
      chunk,
      length: size,
    };
    const sealed = sealInWorker(task).then((r) => Buffer.from(r.chunk.buffer, r.chunk.byteOffset, r.chunk.byteLength));
    // Awaited in order by writeOldest (or settled by abort): never an unhandled rejection meanwhile.
    sealed.catch(() => undefined);
    this.sealing.push(sealed);
    while (this.sealing.length >= SEALS_IN_FLIGHT) await this.writeOldest();
  }

  /** Writes the oldest chunk sealed in the worker (ciphertext and tag); its buffer is then free for reuse. */
  private async writeOldest(): Promise<void> {
    const sealed = await this.sealing.shift()!;
    await this.inner.write(sealed);
    // The inner writer keeps no reference once write() resolved: the buffer takes the next chunk.
    this.spare.push(sealed);
  }

  /**
   * Seals the next chunk (its first `length` bytes) here, in place, puts its tag after it and writes both at once;
   * the chunk buffer takes the next plaintext once written.
   */
  private async seal(last: boolean, length: number): Promise<void> {
    const tag = sealChunkInPlace(this.header, this.aad, this.index++, last, this.chunk.subarray(0, length));
    tag.copy(this.chunk, length);
    await this.inner.write(this.chunk.subarray(0, length + TAG_BYTES));
  }
}

/** What a reader needs to know of a stored object before decrypting any of it. */
interface ObjectShape {
  header: ObjectHeader;
  stored: number;
  plain: number;
}

/**
 * An encrypted repository on top of any driver (POSIX or S3): objects are sealed chunk by chunk with
 * AES-256-GCM (format in cipher-format.ts and docs/catalog-format.md) before the inner storage sees
 * them. Keys (names) are not encrypted. There is no local path: nothing of an encrypted repository is
 * usable in place (a plain-format backup cannot be started where it lies).
 */
export class CipherStorage implements RepositoryStorage {
  readonly kind: 'posix' | 's3';
  readonly location: string;
  private key: Promise<RepositoryKey> | undefined;
  private readonly shapes = new Map<string, ObjectShape>();

  constructor(
    private readonly inner: RepositoryStorage,
    private readonly settings: CipherSettings,
  ) {
    this.kind = inner.kind;
    this.location = inner.location;
    if (inner.renamePrefix) this.renamePrefix = (from, to) => inner.renamePrefix!(from, to);
  }

  renamePrefix?: (from: string, to: string) => Promise<void>;

  /**
   * An encrypting storage over `inner` with a key opened elsewhere in this process: a restore worker thread reads
   * and decrypts a POSIX repository's objects itself ({@link workerSource}), without a passphrase or scrypt.
   */
  static withKey(inner: RepositoryStorage, key: RepositoryKey): CipherStorage {
    const storage = new CipherStorage(inner, {
      cipher: 'aes-256-gcm',
      passphrase: () => Promise.reject(new Error('an opened key needs no passphrase (internal error)')),
    });
    storage.key = Promise.resolve(key);
    return storage;
  }

  /**
   * What a worker thread of this process needs to read this repository itself ({@link withKey} over a
   * PosixStorage of `root`): a POSIX repository only (an S3 client lives in the main thread). Restore decrypts in
   * its workers this way, beside decompression, instead of on the main thread; the key stays in this process.
   */
  async workerSource(): Promise<CipherWorkerSource | undefined> {
    if (!(this.inner instanceof PosixStorage)) return undefined;
    const { master, chunkLog2 } = await this.ready();
    return { root: this.inner.root, master, chunkLog2 };
  }

  /**
   * Positioned reads of the plaintext of `key` from `start` to `end` (see {@link CipherFileReader}): a POSIX
   * repository only (undefined otherwise). Throws StorageNotFoundError when there is no such object.
   */
  async openLocal(key: string, start?: number, end?: number): Promise<CipherFileReader | undefined> {
    if (!(this.inner instanceof PosixStorage)) return undefined;
    const path = this.inner.localPath(key);
    const { master } = await this.ready();
    return CipherFileReader.open(path, this.location, key, master, start, end);
  }

  /** The repository key, opened (or, for an empty repository, created) once; a wrong passphrase fails here. */
  ready(): Promise<RepositoryKey> {
    this.key ??= openRepositoryKey(this.inner, this.settings);
    return this.key;
  }

  async *list(prefix: string, options?: ListOptions): AsyncIterable<ListPage> {
    const { chunkSize } = await this.ready();
    for await (const page of this.inner.list(prefix, options)) {
      const objects: StoredObject[] = [];
      for (const o of page.objects) {
        if (o.key === CIPHER_KEY_OBJECT) continue;
        // A size no sealed object can have is shown as 0; reading it says what is wrong.
        objects.push({ ...o, size: plainSize(o.size, chunkSize) ?? 0 });
      }
      yield { objects, prefixes: page.prefixes };
    }
  }

  async stat(key: string): Promise<StoredObject | undefined> {
    const { chunkSize } = await this.ready();
    const st = await this.inner.stat(key);
    if (!st) return undefined;
    return { ...st, size: plainSize(st.size, chunkSize) ?? 0 };
  }

  /** Header and sizes of `key`, read (and checked) once and cached. */
  private async shape(key: string): Promise<ObjectShape> {
    const cached = this.shapes.get(key);
    const st = await this.inner.stat(key);
    if (!st) throw new StorageNotFoundError(this.location, key);
    if (cached && cached.stored === st.size) return cached;
    const { master } = await this.ready();
    const head = await readFully(await this.inner.read(key, { start: 0, end: Math.min(HEADER_BYTES, st.size) }));
    const checked = objectShape(master, head, st.size);
    if (typeof checked === 'string') throw this.damaged(key, checked);
    const shape = { ...checked, stored: st.size };
    if (this.shapes.size >= HEADER_CACHE_ENTRIES) this.shapes.delete(this.shapes.keys().next().value!);
    this.shapes.set(key, shape);
    return shape;
  }

  private damaged(key: string, what: string): StorageError {
    return new StorageError(`${joinKey(this.location, key)}: ${what}`, key);
  }

  async read(key: string, range?: ReadRange): Promise<Readable> {
    const { header, plain, stored } = await this.shape(key);
    const start = Math.max(0, Math.min(range?.start ?? 0, plain));
    const end = Math.max(start, Math.min(range?.end ?? plain, plain));
    const size = header.chunkSize;
    const sealed = size + TAG_BYTES;
    const last = lastChunkIndex(plain, size);
    const first = Math.floor(start / size);
    const final = end === start ? first : Math.floor((end - 1) / size);
    if (end === start && plain > 0) return Readable.from([]);
    const innerStart = HEADER_BYTES + first * sealed;
    const innerEnd = final === last ? stored : HEADER_BYTES + (final + 1) * sealed;
    const aad = associatedData(header, key);
    const storage = this;
    // The chunk being decrypted: its opener, the stored bytes of it seen so far, and its tag as it arrives. The
    // pieces read are fed as they are: a chunk straddling two reads is never copied together.
    let index = first;
    let opener: ChunkOpener | undefined;
    let seen = 0;
    let tagParts: Buffer[] = [];
    const sealedLength = (i: number) => (i === last ? storage.lastSealed(plain, size) : sealed);
    /**
     * Feeds stored bytes; the plaintext of the range goes to `out` one authenticated chunk at a time. Returns what
     * is wrong when a chunk does not authenticate. `data` may be reused once this returns (the tag is copied).
     */
    const feed = (data: Buffer, out: (piece: Buffer) => void): string | undefined => {
      let at = 0;
      while (at < data.length && index <= final) {
        const want = sealedLength(index);
        opener ??= new ChunkOpener(header, aad, index, index === last);
        const body = want - TAG_BYTES;
        if (seen < body) {
          const n = Math.min(body - seen, data.length - at);
          opener.update(data.subarray(at, at + n));
          seen += n;
          at += n;
          continue;
        }
        const n = Math.min(want - seen, data.length - at);
        tagParts.push(Buffer.from(data.subarray(at, at + n)));
        seen += n;
        at += n;
        if (seen < want) continue;
        const opened = opener.finish(tagParts.length === 1 ? tagParts[0]! : Buffer.concat(tagParts));
        if (!opened) return chunkNotAuthentic(index);
        // Only the requested range of the chunk's plaintext is passed on.
        let pos = index * size;
        for (const part of opened) {
          const from = Math.max(0, start - pos);
          const to = Math.min(part.length, end - pos);
          if (to > from) out(from === 0 && to === part.length ? part : part.subarray(from, to));
          pos += part.length;
        }
        index++;
        opener = undefined;
        seen = 0;
        tagParts = [];
      }
      return undefined;
    };
    const truncated = () => storage.damaged(key, chunkCutShort(index));
    const path = this.inner instanceof PosixStorage ? this.inner.localPath(key) : undefined;
    if (path !== undefined) {
      // POSIX: the ciphertext is read into one buffer, reused for every chunk (the decrypted output is the only new
      // memory per chunk, as a plain read's is): fresh memory costs about as much as AES-GCM itself on such hosts.
      async function* chunks(): AsyncGenerator<Buffer> {
        let handle;
        try {
          handle = await open(path!, 'r');
        } catch (err) {
          if (isErrnoError(err) && (err.code === 'ENOENT' || err.code === 'ENOTDIR'))
            throw new StorageNotFoundError(storage.location, key);
          throw storage.damaged(key, `cannot be read: ${errorMessage(err)}`);
        }
        try {
          const buffer = Buffer.allocUnsafeSlow(Math.min(sealed, innerEnd - innerStart));
          for (let pos = innerStart; pos < innerEnd && index <= final;) {
            let got: number;
            try {
              ({ bytesRead: got } = await handle.read(buffer, 0, Math.min(buffer.length, innerEnd - pos), pos));
            } catch (err) {
              throw storage.damaged(key, `cannot be read: ${errorMessage(err)}`);
            }
            if (got === 0) break;
            pos += got;
            const out: Buffer[] = [];
            const problem = feed(buffer.subarray(0, got), (piece) => out.push(piece));
            if (problem) throw storage.damaged(key, problem);
            yield* out;
          }
          if (index <= final) throw truncated();
        } finally {
          await handle.close();
        }
      }
      return Readable.from(chunks(), { objectMode: false });
    }
    const source = await this.inner.read(key, { start: innerStart, end: innerEnd });
    const decrypt = new Transform({
      transform(data: Buffer, _enc, cb: TransformCallback) {
        const problem = feed(data, (piece) => this.push(piece));
        cb(problem ? storage.damaged(key, problem) : undefined);
      },
      flush(cb: TransformCallback) {
        cb(index <= final ? truncated() : undefined);
      },
    });
    source.on('error', (err) => decrypt.destroy(err));
    // A consumer that stops early (or a chunk that fails) must not leave the inner stream open.
    decrypt.on('close', () => source.destroy());
    return source.pipe(decrypt);
  }

  /** Stored bytes of the last sealed chunk of an object of `plain` bytes. */
  private lastSealed(plain: number, size: number): number {
    const rest = plain - lastChunkIndex(plain, size) * size;
    return rest + TAG_BYTES;
  }

  async readAll(key: string, maxBytes: number): Promise<Buffer> {
    const { plain } = await this.shape(key);
    if (plain > maxBytes)
      throw new StorageError(
        `${joinKey(this.location, key)} is ${plain} bytes, more than the ${maxBytes} such a file can hold`,
        key,
      );
    return readFully(await this.read(key));
  }

  async create(key: string, options?: CreateOptions): Promise<StorageWriter> {
    const { master, chunkLog2 } = await this.ready();
    const header = newObjectHeader(master, chunkLog2);
    // The driver sees the stored size (header and tags added), not the plaintext's.
    const hint = options?.sizeHint;
    const inner = await this.inner.create(
      key,
      hint === undefined ? options : { ...options, sizeHint: storedSize(hint, header.chunkSize) },
    );
    this.shapes.delete(key);
    return new EncryptingWriter(inner, header, associatedData(header, key));
  }

  put(key: string, data: Uint8Array, options?: CreateOptions): Promise<void> {
    return putWhole(this, key, data, options);
  }

  async remove(key: string): Promise<void> {
    this.shapes.delete(key);
    await this.inner.remove(key);
  }

  async removePrefix(prefix: string): Promise<void> {
    this.shapes.clear();
    await this.inner.removePrefix(prefix);
  }

  syncPrefix(prefix: string): Promise<void> {
    return this.inner.syncPrefix(prefix);
  }

  localPath(): undefined {
    return undefined;
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Reads a stream to its end into one buffer (small objects and headers only). */
async function readFully(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  try {
    for await (const part of stream) parts.push(part as Buffer);
  } catch (err) {
    if (err instanceof StorageError) throw err;
    throw new StorageError(errorMessage(err), '');
  }
  return Buffer.concat(parts);
}
