// Concept: how restore tasks read stored objects — a local file (the POSIX fast path), or the repository storage, pumped to a worker thread over a MessagePort with bounded memory.
//
// Restore workers decode, hash and write in worker threads; the storage (an S3 client with its
// sockets) lives in the main thread. A task whose objects have a local path reads them itself, as
// it always did; otherwise the worker asks the main thread to open the object (or a byte range of
// it) and receives its bytes as transferred ArrayBuffers, a few chunks ahead of what it has
// consumed: memory per worker is a handful of chunks, whatever the size of the database.

import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import type { MessagePort } from 'node:worker_threads';
import type { CipherStorage } from '../storage/encryption/cipher-storage.js';
import { StorageNotFoundError, joinKey, type RepositoryStorage } from '../storage/storage.js';
import { errorMessage, isErrnoError } from '../util/errors.js';

/** A stored object a task reads: its key in the storage, and its local path when the driver has one. */
export interface ObjectRef {
  /** Key relative to the storage root. */
  key: string;
  /** `storage.localPath(key)`: read directly when set (POSIX fast path). */
  path?: string;
  /** For messages: `storage.location/key`. */
  name: string;
}

/** Makes the {@link ObjectRef} of a key of `storage`. */
export function objectRef(storage: RepositoryStorage, key: string): ObjectRef {
  const path = storage.localPath(key);
  return { key, name: joinKey(storage.location, key), ...(path !== undefined ? { path } : {}) };
}

/** There is no such object (so a caller can fall back to another name). */
export class ObjectMissingError extends Error {
  constructor(readonly ref: ObjectRef) {
    super(`${ref.name}: no such object`);
    this.name = 'ObjectMissingError';
  }
}

/**
 * Bytes of a stored object read in order with synchronous positioned reads of a local file (the restore workers'
 * fast path, see chunk-source.ts).
 */
export interface ByteRange {
  /** Reads up to `length` next bytes into `buf` at `offset`; 0 at the end of the range. */
  read(buf: Buffer, offset: number, length: number): number;
  /**
   * The next bytes, at most `max` (at least 1 while any are left), as a view of the range's own buffer, valid until
   * the next call; empty at the end. Absent when the range has no buffer of its own (a plain file is read straight
   * into the caller's buffer, which costs the same).
   */
  view?(max: number): Buffer;
  /** Releases the file. */
  close(): void;
}

/** Opens stored objects for a restore task. */
export interface ObjectOpener {
  /**
   * The raw (still compressed) bytes of `ref` from byte `start` up to `end` (exclusive; the end of
   * the object when undefined). Rejects with {@link ObjectMissingError} when it does not exist; a
   * read failing later errors the stream.
   */
  open(ref: ObjectRef, start?: number, end?: number): Promise<Readable>;
  /**
   * The same bytes as {@link open} as a {@link ByteRange}, for a ref without a local path that this opener can
   * still read with positioned reads (an encrypted POSIX repository, decrypted as it is read); undefined when it
   * can only stream it. Rejects with {@link ObjectMissingError} when it does not exist.
   */
  openRange?(ref: ObjectRef, start?: number, end?: number): Promise<ByteRange | undefined>;
}

/** Chunks read from a local file at a time (the decoder splits them further where that bounds its memory). */
const LOCAL_CHUNK = 1024 * 1024;

/** Opens `ref.path` on this host's file system; refs without a path are refused. */
export const localOpener: ObjectOpener = {
  async open(ref, start = 0, end) {
    if (ref.path === undefined) throw new Error(`${ref.name}: no local path to read (internal error)`);
    if (end !== undefined && end <= start) return Readable.from([]);
    const stream = createReadStream(ref.path, {
      start,
      ...(end !== undefined ? { end: end - 1 } : {}),
      highWaterMark: LOCAL_CHUNK,
    });
    // The open error (ENOENT) comes as the first event: wait for it so a missing file rejects here.
    await new Promise<void>((resolve, reject) => {
      const onError = (err: unknown) => {
        stream.off('ready', onReady);
        reject(isErrnoError(err) && err.code === 'ENOENT' ? new ObjectMissingError(ref) : err);
      };
      const onReady = () => {
        stream.off('error', onError);
        resolve();
      };
      stream.once('error', onError);
      stream.once('ready', onReady);
    });
    return stream;
  },
};

/** `storage.read` of `key` from `start` to `end` (the object's end when undefined). */
async function readFrom(
  storage: RepositoryStorage,
  key: string,
  start: number,
  end: number | undefined,
): Promise<Readable> {
  if (start === 0 && end === undefined) return storage.read(key);
  if (end === undefined) {
    const st = await storage.stat(key);
    if (st === undefined) throw new StorageNotFoundError(storage.location, key);
    end = st.size;
  }
  return storage.read(key, { start, end });
}

/** Opens objects through the storage directly (the main thread: incremental links, WAL). */
export function storageOpener(storage: RepositoryStorage): ObjectOpener {
  return {
    async open(ref, start = 0, end) {
      try {
        return await readFrom(storage, ref.key, start, end);
      } catch (err) {
        if (err instanceof StorageNotFoundError) throw new ObjectMissingError(ref);
        throw err;
      }
    },
  };
}

/** Local path when the ref has one, else `fallback`. */
export function preferLocal(fallback: ObjectOpener): ObjectOpener {
  return { open: (ref, start, end) => (ref.path !== undefined ? localOpener : fallback).open(ref, start, end) };
}

/**
 * Opens objects of an encrypted POSIX repository in a restore worker: with positioned reads decrypted chunk by chunk
 * in a recycled buffer ({@link CipherStorage.openLocal}), or as a stream (gzip, which has no in-place decoder).
 */
export function cipherOpener(storage: CipherStorage): ObjectOpener {
  const streams = storageOpener(storage);
  return {
    open: (ref, start, end) => streams.open(ref, start, end),
    async openRange(ref, start, end) {
      try {
        return await storage.openLocal(ref.key, start, end);
      } catch (err) {
        if (err instanceof StorageNotFoundError) throw new ObjectMissingError(ref);
        throw err;
      }
    },
  };
}

/** Chunks a stream may have sent ahead of what the worker consumed. */
const WINDOW = 8;

/** Worker → main thread. */
type Request =
  | { op: 'open'; id: number; key: string; name: string; start: number; end?: number }
  | { op: 'more'; id: number }
  | { op: 'close'; id: number };

/** Main thread → worker. */
type Reply =
  | { id: number; opened: true }
  | { id: number; chunk: ArrayBuffer }
  | { id: number; end: true }
  | { id: number; error: string; missing?: boolean };

/** The chunk's bytes as an ArrayBuffer of their own (transferred, so copied only when the chunk shares one). */
function ownBuffer(chunk: Buffer): ArrayBuffer {
  const ab = chunk.buffer as ArrayBuffer;
  if (chunk.byteOffset === 0 && chunk.byteLength === ab.byteLength) return ab;
  return ab.slice(chunk.byteOffset, chunk.byteOffset + chunk.byteLength);
}

/**
 * Main-thread side: answers the open requests a worker sends on `port` by reading `storage`, sending
 * each stream's chunks at most {@link WINDOW} ahead of the worker's acknowledgements. Returns a
 * function that ends everything still open (call it when the task is over, whatever its outcome).
 */
export function serveObjects(storage: RepositoryStorage, port: MessagePort): () => void {
  const streams = new Map<number, { stream?: Readable; credit: number; closed: boolean }>();
  const send = (reply: Reply, transfer: ArrayBuffer[] = []) => {
    try {
      port.postMessage(reply, transfer);
    } catch {
      // The port is closed: the task is over.
    }
  };
  const pump = (id: number) => {
    const s = streams.get(id);
    if (!s?.stream) return;
    if (s.credit > 0) s.stream.resume();
    else s.stream.pause();
  };
  port.on('message', (req: Request) => {
    if (req.op === 'open') {
      const s: { stream?: Readable; credit: number; closed: boolean } = { credit: WINDOW, closed: false };
      streams.set(req.id, s);
      readFrom(storage, req.key, req.start, req.end).then(
        (stream) => {
          if (s.closed) {
            stream.destroy();
            return;
          }
          s.stream = stream;
          stream.on('data', (chunk: Buffer) => {
            s.credit--;
            const ab = ownBuffer(chunk);
            send({ id: req.id, chunk: ab }, [ab]);
            pump(req.id);
          });
          stream.on('end', () => {
            streams.delete(req.id);
            send({ id: req.id, end: true });
          });
          stream.on('error', (err) => {
            streams.delete(req.id);
            if (!s.closed) send({ id: req.id, error: `${req.name}: ${errorMessage(err)}` });
          });
          send({ id: req.id, opened: true });
          pump(req.id);
        },
        (err: unknown) => {
          streams.delete(req.id);
          const missing = err instanceof StorageNotFoundError;
          send({ id: req.id, error: missing ? `${req.name}: no such object` : errorMessage(err), missing });
        },
      );
    } else if (req.op === 'more') {
      const s = streams.get(req.id);
      if (s) {
        s.credit++;
        pump(req.id);
      }
    } else {
      const s = streams.get(req.id);
      if (s) {
        s.closed = true;
        s.stream?.destroy();
        streams.delete(req.id);
      }
    }
  });
  return () => {
    for (const s of streams.values()) {
      s.closed = true;
      s.stream?.destroy();
    }
    streams.clear();
    port.close();
  };
}

/** Worker side: opens objects by asking the main thread's {@link serveObjects} on `port`. */
export class PortOpener implements ObjectOpener {
  private nextId = 1;
  private readonly handlers = new Map<number, (reply: Reply) => void>();

  constructor(private readonly port: MessagePort) {
    port.on('message', (reply: Reply) => this.handlers.get(reply.id)?.(reply));
  }

  open(ref: ObjectRef, start = 0, end?: number): Promise<Readable> {
    const id = this.nextId++;
    const port = this.port;
    let owed = 0;
    const stream = new Readable({
      highWaterMark: 256 * 1024,
      read() {
        // The consumer wants more: give the chunks it has taken back as credit.
        if (owed > 0) {
          for (; owed > 0; owed--) port.postMessage({ op: 'more', id } satisfies Request);
        }
      },
      destroy: (err, cb) => {
        if (this.handlers.delete(id)) port.postMessage({ op: 'close', id } satisfies Request);
        cb(err);
      },
    });
    return new Promise<Readable>((resolve, reject) => {
      this.handlers.set(id, (reply) => {
        if ('opened' in reply) resolve(stream);
        else if ('chunk' in reply) {
          owed++;
          stream.push(Buffer.from(reply.chunk));
        } else if ('end' in reply) {
          this.handlers.delete(id);
          stream.push(null);
        } else {
          this.handlers.delete(id);
          const err = reply.missing ? new ObjectMissingError(ref) : new Error(reply.error);
          // Before 'opened' the open fails; after, the stream does.
          reject(err);
          stream.destroy(err);
        }
      });
      const req: Request = {
        op: 'open',
        id,
        key: ref.key,
        name: ref.name,
        start,
        ...(end !== undefined ? { end } : {}),
      };
      port.postMessage(req);
    });
  }

  /** Stops listening (the task is over). */
  close(): void {
    this.port.close();
  }
}
