// Concept: the repository storage interface — what every driver (POSIX, S3) provides and every catalog operation uses.
//
// A `RepositoryStorage` is one server's part of the repository: `backup_path/<server>` on a file
// system, or `s3://<bucket>/<s3_prefix>/<server>` in a bucket. Keys are relative to that root,
// `/`-separated, normalized (no empty, `.` or `..` component, no leading `/`): `archived_wals/<segment>`,
// `<backup id>/backupinfo`, `<backup id>/base.tar.lz4`. A "prefix" is a directory-like key (`''` is
// the root); listing `p` covers the keys below `p/`. Drivers refuse any other key shape, so a name
// read from an untrusted place can never address something outside the root.
//
// Locks are not storage: they stay on the BART host's own disk (catalog/lock.ts), which is why one
// BART host owns a repository prefix (docs/object-storage.md).

import type { Readable } from 'node:stream';
import { BartError } from '../util/errors.js';
import { relativePathProblem } from '../util/untrusted-path.js';

/** A stored object, as a listing or {@link RepositoryStorage.stat} sees it. */
export interface StoredObject {
  /** Its key, relative to the storage root. */
  key: string;
  /** Its size in bytes. */
  size: number;
  /** When it was last written (POSIX mtime, S3 LastModified). */
  modified: Date;
}

/** One page of a listing. */
export interface ListPage {
  /** Objects of this page, in no particular order. */
  objects: StoredObject[];
  /**
   * With {@link ListOptions.shallow}: names (one component, relative to the listed prefix) of the
   * sub-prefixes that hold objects. Empty otherwise.
   */
  prefixes: string[];
}

/** How to list. */
export interface ListOptions {
  /**
   * Only the direct children: the objects directly below the prefix and the names of its
   * sub-prefixes (as a directory listing gives them). Without it, every object below, at any depth.
   */
  shallow?: boolean;
}

/** A byte range of an object: `start` inclusive, `end` exclusive. */
export interface ReadRange {
  start: number;
  end: number;
}

/** How to create an object. */
export interface CreateOptions {
  /**
   * Store nothing and fail with {@link StorageExistsError} when the key exists already (WAL
   * archiving's idempotence: two pushes of one segment never overwrite each other). Atomic on every
   * driver: POSIX `link(2)`, S3 `If-None-Match: *`.
   */
  ifAbsent?: boolean;
  /**
   * POSIX: fsync the file and its directory on {@link StorageWriter.finish} (the default). Callers
   * writing many files pass false and call {@link RepositoryStorage.syncPrefix} once at the end.
   * S3: ignored (a completed upload is durable).
   */
  durable?: boolean;
  /** The size, when known in advance: lets a driver pick one PUT over a multipart upload. */
  sizeHint?: number;
}

/** An object being written. Nothing is visible under its key until {@link finish} resolves. */
export interface StorageWriter {
  /**
   * Appends `data`. Resolves when the writer can take more (memory stays bounded). Once it resolves the writer holds
   * no reference to `data`: callers reuse their buffers (the backup writers recycle compress units), so a driver
   * that keeps bytes for later (a multipart part, an encryption chunk) copies them.
   */
  write(data: Uint8Array): Promise<void>;
  /** Completes the object and makes it visible under its key, whole. */
  finish(): Promise<void>;
  /** Throws away what was written; nothing becomes visible. Never throws. */
  abort(): Promise<void>;
}

/** The repository driver interface: small on purpose, so that a driver is easy to get right. */
export interface RepositoryStorage {
  /** Which driver this is. */
  readonly kind: 'posix' | 's3';
  /**
   * Where the root is, for people and messages: `/var/lib/bart/srv1` or `s3://bucket/prefix/srv1`.
   * Never holds credentials.
   */
  readonly location: string;
  /**
   * The objects below `prefix`, page by page (a driver pages by itself: S3 1000 keys a call). A
   * prefix that does not exist lists nothing. Objects still being written are never listed.
   */
  list(prefix: string, options?: ListOptions): AsyncIterable<ListPage>;
  /** Size and time of `key`; undefined when there is no such object. */
  stat(key: string): Promise<StoredObject | undefined>;
  /**
   * A stream of the object's bytes (or of `range`). Fails with {@link StorageNotFoundError} when
   * there is no such object; a read that fails half way errors the stream.
   */
  read(key: string, range?: ReadRange): Promise<Readable>;
  /**
   * The whole object in memory, for small catalog files (backupinfo, history files, MBMs). Fails
   * with a {@link StorageError} when it is larger than `maxBytes`, so that a damaged or hostile
   * object cannot take the memory.
   */
  readAll(key: string, maxBytes: number): Promise<Buffer>;
  /** Starts writing `key` (see {@link StorageWriter}); an existing object is replaced on finish unless `ifAbsent`. */
  create(key: string, options?: CreateOptions): Promise<StorageWriter>;
  /** Writes a small object in one call: {@link create}, one write, finish. */
  put(key: string, data: Uint8Array, options?: CreateOptions): Promise<void>;
  /** Removes `key`; an absent key is not an error. */
  remove(key: string): Promise<void>;
  /**
   * Removes every object below `prefix` (and, on S3, aborts the multipart uploads left there by a
   * process that died). An absent prefix is not an error.
   */
  removePrefix(prefix: string): Promise<void>;
  /** Makes everything written below `prefix` durable (POSIX: fsync files and directories; S3: nothing to do). */
  syncPrefix(prefix: string): Promise<void>;
  /**
   * The object's path on this host's file system when the driver is POSIX, else undefined. Only for
   * fast paths (a worker thread writing a file itself, a plain backup started in place); every
   * caller must also work without it.
   */
  localPath(key: string): string | undefined;
  /**
   * Renames every key below `from` to below `to` at once. Only drivers that can do it atomically
   * have it (POSIX `rename(2)` of a directory); callers use another way to publish otherwise.
   */
  renamePrefix?(from: string, to: string): Promise<void>;
  /** Ends connections (S3 sockets); the storage is not used afterwards. */
  close(): Promise<void>;
}

/** A storage operation failed: the message names the object (location/key) and what went wrong. */
export class StorageError extends BartError {
  constructor(
    message: string,
    /** The key concerned (relative to the root). */
    readonly key: string,
  ) {
    super(message);
    this.name = 'StorageError';
  }
}

/** There is no object under the key. */
export class StorageNotFoundError extends StorageError {
  constructor(location: string, key: string) {
    super(`${joinKey(location, key)}: no such object`, key);
    this.name = 'StorageNotFoundError';
  }
}

/** A create with `ifAbsent` found the key taken. */
export class StorageExistsError extends StorageError {
  constructor(location: string, key: string) {
    super(`${joinKey(location, key)}: already exists`, key);
    this.name = 'StorageExistsError';
  }
}

/**
 * {@link RepositoryStorage.put} in terms of `create`: one write, then finish; the object is dropped when the
 * write fails. Every driver's put is this (the S3 driver passes the size so that one PUT is made).
 */
export async function putWhole(
  storage: RepositoryStorage,
  key: string,
  data: Uint8Array,
  options: CreateOptions = {},
): Promise<void> {
  const writer = await storage.create(key, { ...options, sizeHint: data.length });
  try {
    await writer.write(data);
  } catch (err) {
    await writer.abort();
    throw err;
  }
  await writer.finish();
}

/** Joins keys (or a location and a key) with `/`, skipping empty parts. */
export function joinKey(...parts: string[]): string {
  return parts.filter((p) => p !== '').join('/');
}

/** The last component of a key. */
export function keyBaseName(key: string): string {
  return key.slice(key.lastIndexOf('/') + 1);
}

/**
 * Checks a key (or, with `prefix`, a prefix, which may be `''`) before a driver uses it; throws a
 * {@link StorageError} naming it. Keys come from our own code, but some of their parts were read
 * from the repository or a database host: this is the last line.
 */
export function checkKey(key: string, location: string, prefix = false): string {
  if (prefix && key === '') return key;
  const problem = relativePathProblem(key);
  if (problem !== undefined)
    throw new StorageError(`${location}: refusing storage key ${JSON.stringify(key)}: ${problem}`, key);
  return key;
}
