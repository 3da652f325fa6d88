// Concept: the S3 storage driver — a repository root as a key prefix in a bucket of an S3-compatible store.

import { PassThrough, Readable, Transform, type TransformCallback } from 'node:stream';
import { log } from '../../util/log.js';
import { relativePathProblem } from '../../util/untrusted-path.js';
import {
  StorageError,
  StorageNotFoundError,
  checkKey,
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
  DEFAULT_PART_SIZE,
  DEFAULT_PARTS_IN_FLIGHT,
  connectS3,
  endpointName,
  type S3Connection,
  type S3StorageOptions,
} from './s3-client.js';
import { describeS3Error, s3ErrorCode } from './s3-errors.js';
import { MAX_IF_ABSENT_BYTES, S3Writer, type S3WriterHost } from './s3-writer.js';

/** DeleteObjects takes at most 1000 keys a call. */
const DELETE_BATCH = 1000;

/**
 * A repository root in a bucket: `s3://<bucket>/<s3_prefix>/<server>`. A key maps to the object
 * `<root>/<key>`; "directories" are key prefixes, present while objects are below them. Writes
 * are atomic by S3's nature (an object appears whole, on PutObject or CompleteMultipartUpload),
 * create-if-absent is a conditional PutObject (`If-None-Match: *`), every upload carries
 * `Content-MD5`. The SDK is loaded and the client built on first use.
 */
export class S3Storage implements RepositoryStorage, S3WriterHost {
  readonly kind = 's3';
  readonly location: string;
  readonly bucket: string;
  /** The store's address, for messages. */
  readonly endpoint: string;
  private connecting: Promise<S3Connection> | undefined;
  private closed = false;
  /** Credentials to mask in any message (they never go into one, but a store might echo them). */
  private readonly secrets: string[];

  constructor(readonly options: S3StorageOptions) {
    if (options.root !== '') checkKey(options.root, `s3://${options.bucket}`);
    this.bucket = options.bucket;
    this.location = `s3://${joinKey(options.bucket, options.root)}`;
    this.endpoint = endpointName(options);
    const c = options.credentials;
    this.secrets = c ? [c.accessKeyId.reveal(), c.secretAccessKey.reveal()] : [];
  }

  /** The client, built on first use (and the SDK loaded then). */
  connection(): Promise<S3Connection> {
    if (this.closed) return Promise.reject(new StorageError(`${this.location}: storage used after close`, ''));
    this.connecting ??= connectS3(this.options, this.location);
    return this.connecting;
  }

  objectKey(key: string): string {
    return joinKey(this.options.root, key);
  }

  /** The object key prefix that lists everything below `prefix` (with its trailing `/`, or '' for the bucket's top). */
  private listPrefix(prefix: string): string {
    const full = joinKey(this.options.root, prefix);
    return full === '' ? '' : `${full}/`;
  }

  failure(operation: string, key: string, err: unknown): StorageError {
    return describeS3Error(err, {
      operation,
      object: joinKey(this.location, key),
      key,
      endpoint: this.endpoint,
      bucket: this.bucket,
      secrets: this.secrets,
    });
  }

  async *list(prefix: string, options: ListOptions = {}): AsyncIterable<ListPage> {
    checkKey(prefix, this.location, true);
    const { sdk, client } = await this.connectionFor('list', prefix);
    const listed = this.listPrefix(prefix);
    let token: string | undefined;
    let refused = 0;
    do {
      let out;
      try {
        out = await client.send(
          new sdk.ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: listed,
            ...(options.shallow ? { Delimiter: '/' } : {}),
            ...(this.options.pageSize !== undefined ? { MaxKeys: this.options.pageSize } : {}),
            ...(token !== undefined ? { ContinuationToken: token } : {}),
          }),
        );
      } catch (err) {
        throw this.failure('list', prefix, err);
      }
      const page: ListPage = { objects: [], prefixes: [] };
      for (const o of out.Contents ?? []) {
        const rel = o.Key?.slice(listed.length) ?? '';
        // Keys this interface could not address (`a//b`, `../x`, written by another tool) are not
        // ours: skipped, so that no caller joins them onto a path.
        if (o.Key === undefined || !o.Key.startsWith(listed) || relativePathProblem(rel) !== undefined) {
          refused++;
          continue;
        }
        page.objects.push({ key: joinKey(prefix, rel), size: o.Size ?? 0, modified: o.LastModified ?? new Date(0) });
      }
      for (const p of out.CommonPrefixes ?? []) {
        const name = p.Prefix?.slice(listed.length).replace(/\/$/, '') ?? '';
        if (!p.Prefix?.startsWith(listed) || relativePathProblem(name) !== undefined || name.includes('/')) {
          refused++;
          continue;
        }
        page.prefixes.push(name);
      }
      if (page.objects.length + page.prefixes.length > 0) yield page;
      token = out.IsTruncated ? out.NextContinuationToken : undefined;
      if (out.IsTruncated && token === undefined)
        throw new StorageError(
          `cannot list ${joinKey(this.location, prefix)}: the store said the listing is truncated but gave no continuation token`,
          prefix,
        );
    } while (token !== undefined);
    if (refused > 0)
      log.warning(
        `${joinKey(this.location, prefix)}: ignored ${refused} object key(s) that are not clean relative keys (not written by pgbart)`,
      );
  }

  /** The client, or a StorageError about `key` (a CA file that cannot be read). */
  private async connectionFor(operation: string, key: string): Promise<S3Connection> {
    try {
      return await this.connection();
    } catch (err) {
      throw this.failure(operation, key, err);
    }
  }

  async stat(key: string): Promise<StoredObject | undefined> {
    checkKey(key, this.location);
    const { sdk, client } = await this.connectionFor('stat', key);
    try {
      const out = await client.send(new sdk.HeadObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key) }));
      return { key, size: out.ContentLength ?? 0, modified: out.LastModified ?? new Date(0) };
    } catch (err) {
      const { name, status } = s3ErrorCode(err);
      if (status === 404 || name === 'NotFound' || name === 'NoSuchKey') return undefined;
      throw this.failure('stat', key, err);
    }
  }

  async read(key: string, range?: ReadRange): Promise<Readable> {
    checkKey(key, this.location);
    if (range && range.end <= range.start) {
      // An empty range still needs the object to exist, like on POSIX.
      if ((await this.stat(key)) === undefined) throw new StorageNotFoundError(this.location, key);
      return Readable.from([]);
    }
    const { sdk, client } = await this.connectionFor('read', key);
    let out;
    try {
      out = await client.send(
        new sdk.GetObjectCommand({
          Bucket: this.bucket,
          Key: this.objectKey(key),
          ...(range ? { Range: `bytes=${range.start}-${range.end - 1}` } : {}),
        }),
      );
    } catch (err) {
      const { name, status } = s3ErrorCode(err);
      if (name === 'NoSuchKey' || status === 404) throw new StorageNotFoundError(this.location, key);
      // A range that starts at or past the end: no bytes, as a file read there gives.
      if (range && (name === 'InvalidRange' || status === 416)) return Readable.from([]);
      throw this.failure('read', key, err);
    }
    // A store that ignored Range would send the whole object as if it were the range.
    if (range && !(out.ContentRange ?? '').startsWith(`bytes ${range.start}-`)) {
      (out.Body as Readable | undefined)?.destroy();
      throw new StorageError(
        `cannot read ${joinKey(this.location, key)}: the store answered a read of bytes ${range.start}-${range.end - 1} with ${out.ContentRange === undefined ? 'no Content-Range' : `Content-Range ${out.ContentRange}`}`,
        key,
      );
    }
    return this.checkedBody(key, out.Body as Readable | undefined, out.ContentLength);
  }

  /**
   * The response body as a stream that errors (with a StorageError) when the connection fails
   * half way or ends before the announced length: a restore must never take a truncated file
   * for a whole one.
   */
  private checkedBody(key: string, body: Readable | undefined, expected: number | undefined): Readable {
    if (body === undefined) {
      if (expected === undefined || expected === 0) return Readable.from([]);
      const empty = new PassThrough();
      empty.destroy(new StorageError(`cannot read ${joinKey(this.location, key)}: the store sent no body`, key));
      return empty;
    }
    let received = 0;
    const counter = new Transform({
      transform: (chunk: Buffer, _enc: BufferEncoding, done: TransformCallback) => {
        received += chunk.length;
        done(null, chunk);
      },
      flush: (done: TransformCallback) => {
        if (expected !== undefined && received !== expected)
          done(
            new StorageError(
              `cannot read ${joinKey(this.location, key)}: the connection ended after ${received} of ${expected} bytes`,
              key,
            ),
          );
        else done();
      },
    });
    body.once('error', (err) => counter.destroy(this.failure('read', key, err)));
    // The body ending early without an error (a proxy closing) is caught by flush's length check;
    // one closed without 'end' would leave the reader waiting: make that an error too.
    body.once('close', () => {
      if (!body.readableEnded && !counter.destroyed)
        counter.destroy(
          new StorageError(
            `cannot read ${joinKey(this.location, key)}: the connection closed after ${received} bytes`,
            key,
          ),
        );
    });
    counter.once('close', () => {
      if (!body.destroyed) body.destroy();
    });
    body.pipe(counter);
    return counter;
  }

  async readAll(key: string, maxBytes: number): Promise<Buffer> {
    checkKey(key, this.location);
    const { sdk, client } = await this.connectionFor('read', key);
    let out;
    try {
      out = await client.send(new sdk.GetObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key) }));
    } catch (err) {
      const { name, status } = s3ErrorCode(err);
      if (name === 'NoSuchKey' || status === 404) throw new StorageNotFoundError(this.location, key);
      throw this.failure('read', key, err);
    }
    const tooLarge = (size: number) =>
      new StorageError(
        `${joinKey(this.location, key)} is ${size} bytes, more than the ${maxBytes} such a file can hold`,
        key,
      );
    const body = out.Body as Readable | undefined;
    if (out.ContentLength !== undefined && out.ContentLength > maxBytes) {
      body?.destroy();
      throw tooLarge(out.ContentLength);
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of this.checkedBody(key, body, out.ContentLength)) {
      size += (chunk as Buffer).length;
      // No trusted length (a store without Content-Length): stop at the limit all the same.
      if (size > maxBytes) {
        body?.destroy();
        throw tooLarge(size);
      }
      chunks.push(chunk as Buffer);
    }
    return Buffer.concat(chunks, size);
  }

  async create(key: string, options: CreateOptions = {}): Promise<StorageWriter> {
    checkKey(key, this.location);
    if (options.ifAbsent && options.sizeHint !== undefined && options.sizeHint > MAX_IF_ABSENT_BYTES)
      throw new StorageError(
        `cannot write ${joinKey(this.location, key)}: a create-if-absent object (archived WAL) is limited to ${MAX_IF_ABSENT_BYTES} bytes on S3, this one is ${options.sizeHint}`,
        key,
      );
    return new S3Writer(
      this,
      key,
      options,
      this.options.partSize ?? DEFAULT_PART_SIZE,
      this.options.partsInFlight ?? DEFAULT_PARTS_IN_FLIGHT,
    );
  }

  put(key: string, data: Uint8Array, options?: CreateOptions): Promise<void> {
    return putWhole(this, key, data, options);
  }

  async remove(key: string): Promise<void> {
    checkKey(key, this.location);
    const { sdk, client } = await this.connectionFor('remove', key);
    try {
      // S3 answers 204 for an absent key too.
      await client.send(new sdk.DeleteObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key) }));
    } catch (err) {
      throw this.failure('remove', key, err);
    }
  }

  async removePrefix(prefix: string): Promise<void> {
    checkKey(prefix, this.location, true);
    if (prefix === '') throw new StorageError(`${this.location}: refusing to remove the whole repository root`, prefix);
    const { sdk, client } = await this.connectionFor('remove', prefix);
    const listed = this.listPrefix(prefix);
    // Uploads a killed process left under the prefix first: they hold parts (space) and are never listed as objects.
    try {
      let keyMarker: string | undefined;
      let uploadMarker: string | undefined;
      for (;;) {
        const out = await client.send(
          new sdk.ListMultipartUploadsCommand({
            Bucket: this.bucket,
            Prefix: listed,
            ...(keyMarker !== undefined ? { KeyMarker: keyMarker } : {}),
            ...(uploadMarker !== undefined ? { UploadIdMarker: uploadMarker } : {}),
          }),
        );
        for (const u of out.Uploads ?? []) {
          if (u.Key === undefined || u.UploadId === undefined) continue;
          await client.send(
            new sdk.AbortMultipartUploadCommand({ Bucket: this.bucket, Key: u.Key, UploadId: u.UploadId }),
          );
        }
        if (!out.IsTruncated) break;
        keyMarker = out.NextKeyMarker;
        uploadMarker = out.NextUploadIdMarker;
        if (keyMarker === undefined && uploadMarker === undefined) break;
      }
    } catch (err) {
      const { name, status } = s3ErrorCode(err);
      // An upload that completed or was aborted meanwhile is gone anyway.
      if (!(name === 'NoSuchUpload' || status === 404)) throw this.failure('remove', prefix, err);
    }
    // Then every object, a listing page (at most 1000 keys) per DeleteObjects. Keys are listed raw
    // here, unclean ones included: removing a prefix removes everything below it.
    try {
      let token: string | undefined;
      do {
        const out = await client.send(
          new sdk.ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: listed,
            MaxKeys: Math.min(this.options.pageSize ?? DELETE_BATCH, DELETE_BATCH),
            ...(token !== undefined ? { ContinuationToken: token } : {}),
          }),
        );
        const keys = (out.Contents ?? []).flatMap((o) => (o.Key !== undefined ? [{ Key: o.Key }] : []));
        if (keys.length > 0) {
          const deleted = await client.send(
            new sdk.DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: keys, Quiet: true } }),
          );
          const failed = deleted.Errors ?? [];
          if (failed.length > 0) {
            const first = failed[0]!;
            throw new StorageError(
              `cannot remove ${joinKey(this.location, prefix)}: ${failed.length} object(s) not removed, e.g. s3://${this.bucket}/${first.Key ?? '?'}: ${first.Code ?? ''} ${first.Message ?? ''}`.trim(),
              prefix,
            );
          }
        }
        token = out.IsTruncated ? out.NextContinuationToken : undefined;
      } while (token !== undefined);
    } catch (err) {
      throw this.failure('remove', prefix, err);
    }
  }

  async syncPrefix(prefix: string): Promise<void> {
    // A completed PutObject or multipart upload is durable: nothing to flush.
    checkKey(prefix, this.location, true);
  }

  localPath(key: string): undefined {
    void key;
    return undefined;
  }

  async close(): Promise<void> {
    this.closed = true;
    const connecting = this.connecting;
    this.connecting = undefined;
    if (connecting === undefined) return;
    try {
      (await connecting).client.destroy();
    } catch {
      // Never connected (a CA file that could not be read): nothing to end.
    }
  }
}
