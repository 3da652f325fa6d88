// Concept: writing one S3 object with bounded memory — one PUT when it fits a part, else a multipart upload with parts in flight.

import { createHash } from 'node:crypto';
import { StorageError, StorageExistsError, type CreateOptions, type StorageWriter } from '../storage.js';
import type { S3Connection } from './s3-client.js';
import { s3ErrorCode } from './s3-errors.js';

/**
 * The largest object a create-if-absent writer takes. radosgw (and other stores) ignore
 * `If-None-Match` on CompleteMultipartUpload, so such an object must go as one PutObject, buffered
 * whole: WAL segments (at most 1 GiB) and catalog files fit.
 */
export const MAX_IF_ABSENT_BYTES = 1024 * 1024 * 1024;
/** S3 numbers parts 1 to 10000. */
const MAX_PARTS = 10_000;
/**
 * Parts of one size before the part size doubles, for objects larger than the size hint said (or
 * without one): 2000 parts of 16, 32, 64, 128 MiB and then 256 MiB reach about 1 TiB.
 */
const PARTS_PER_SIZE_STEP = 2000;

/** What a writer needs from its storage (kept narrow so the writer does not depend on the storage class). */
export interface S3WriterHost {
  /** The client (connected on first use). */
  connection(): Promise<S3Connection>;
  /** The bucket. */
  readonly bucket: string;
  /** The storage's location, for messages. */
  readonly location: string;
  /** The full object key of a key relative to the root. */
  objectKey(key: string): string;
  /** A StorageError describing a failed request about `key`. */
  failure(operation: string, key: string, err: unknown): StorageError;
}

/** The base64 MD5 the store checks the body against (`Content-MD5`): a corrupted body is refused, not stored. */
export function contentMd5(body: Uint8Array): string {
  return createHash('md5').update(body).digest('base64');
}

/**
 * An object being written. Bytes are buffered up to one part; an object that stays within one part
 * (and every create-if-absent object) is stored by one PutObject on {@link finish}; a larger one
 * becomes a multipart upload whose parts go up `partsInFlight` at a time while the caller keeps
 * writing ({@link write} waits when the window is full: memory stays at about
 * (partsInFlight + 1) × partSize). Nothing is visible under the key before {@link finish}: S3 shows
 * a multipart object only once it is completed.
 */
export class S3Writer implements StorageWriter {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private total = 0;
  private upload: Promise<string> | undefined;
  private uploadId: string | undefined;
  private readonly parts: { PartNumber: number; ETag: string }[] = [];
  private readonly inflight = new Set<Promise<void>>();
  private nextPart = 1;
  private failed: StorageError | undefined;
  private state: 'open' | 'finishing' | 'done' | 'aborted' = 'open';
  private readonly basePartSize: number;

  constructor(
    private readonly host: S3WriterHost,
    private readonly key: string,
    private readonly options: CreateOptions,
    partSize: number,
    private readonly partsInFlight: number,
  ) {
    // A size hint larger than 10000 parts of partSize raises the part size so that the object fits.
    const hinted = options.sizeHint !== undefined ? Math.ceil(options.sizeHint / (MAX_PARTS - 500)) : 0;
    this.basePartSize = Math.max(partSize, Math.ceil(hinted / (1024 * 1024)) * 1024 * 1024);
  }

  private get partSize(): number {
    return this.basePartSize * 2 ** Math.min(4, Math.floor((this.nextPart - 1) / PARTS_PER_SIZE_STEP));
  }

  async write(data: Uint8Array): Promise<void> {
    if (this.state !== 'open')
      throw new StorageError(`${this.host.location}: write to ${this.key} after it was ${this.state}`, this.key);
    if (this.failed) throw this.failed;
    if (data.length === 0) return;
    if (this.options.ifAbsent && this.total + data.length > MAX_IF_ABSENT_BYTES)
      throw new StorageError(
        `cannot write ${this.host.location}/${this.key}: a create-if-absent object (archived WAL) is limited to ${MAX_IF_ABSENT_BYTES} bytes on S3 (it is stored by one conditional PUT)`,
        this.key,
      );
    // Taken a slice at a time, so that one huge write() still holds at most about a part more in memory.
    const slice = this.basePartSize;
    for (let offset = 0; offset < data.length; offset += slice) {
      const piece = data.subarray(offset, offset + slice);
      // A copy: callers may reuse their buffer once write() resolves.
      this.chunks.push(Buffer.from(piece));
      this.total += piece.length;
      this.buffered += piece.length;
      if (this.options.ifAbsent) continue;
      // More than a part buffered: a multipart upload (an object of exactly one part stays one PUT).
      while (this.buffered > this.partSize) await this.startPart(this.take(this.partSize));
    }
  }

  /** The first `n` buffered bytes as one buffer; copies only what it must (no chunk is larger than a part). */
  private take(n: number): Buffer {
    const parts: Buffer[] = [];
    let got = 0;
    while (got < n) {
      const chunk = this.chunks[0]!;
      const need = n - got;
      if (chunk.length <= need) {
        parts.push(chunk);
        this.chunks.shift();
        got += chunk.length;
      } else {
        parts.push(chunk.subarray(0, need));
        // The rest is copied so the part's memory is freed once it is uploaded.
        this.chunks[0] = Buffer.from(chunk.subarray(need));
        got += need;
      }
    }
    this.buffered -= n;
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
  }

  /** Waits for room in the window, then starts uploading `body` as the next part. */
  private async startPart(body: Buffer): Promise<void> {
    while (this.inflight.size >= this.partsInFlight) await Promise.race(this.inflight);
    if (this.failed) throw this.failed;
    const partNumber = this.nextPart++;
    if (partNumber > MAX_PARTS)
      throw new StorageError(
        `cannot write ${this.host.location}/${this.key}: more than ${MAX_PARTS} parts (an object over about 1 TiB)`,
        this.key,
      );
    const done: Promise<void> = this.uploadPart(partNumber, body)
      .catch((err: unknown) => {
        this.failed ??= this.host.failure('write', this.key, err);
      })
      .finally(() => this.inflight.delete(done));
    this.inflight.add(done);
  }

  private startUpload(): Promise<string> {
    this.upload ??= (async () => {
      const { sdk, client } = await this.host.connection();
      const out = await client.send(
        new sdk.CreateMultipartUploadCommand({ Bucket: this.host.bucket, Key: this.host.objectKey(this.key) }),
      );
      if (!out.UploadId) throw new Error('CreateMultipartUpload answered without an UploadId');
      this.uploadId = out.UploadId;
      return out.UploadId;
    })();
    return this.upload;
  }

  private async uploadPart(partNumber: number, body: Buffer): Promise<void> {
    const uploadId = await this.startUpload();
    const { sdk, client } = await this.host.connection();
    const out = await client.send(
      new sdk.UploadPartCommand({
        Bucket: this.host.bucket,
        Key: this.host.objectKey(this.key),
        UploadId: uploadId,
        PartNumber: partNumber,
        Body: body,
        ContentLength: body.length,
        ContentMD5: contentMd5(body),
      }),
    );
    if (!out.ETag) throw new Error(`UploadPart ${partNumber} answered without an ETag`);
    this.parts.push({ PartNumber: partNumber, ETag: out.ETag });
  }

  async finish(): Promise<void> {
    if (this.state !== 'open')
      throw new StorageError(`${this.host.location}: finish of ${this.key} after it was ${this.state}`, this.key);
    this.state = 'finishing';
    try {
      if (this.failed) throw this.failed;
      if (this.upload === undefined) await this.putWhole();
      else await this.completeUpload();
      this.state = 'done';
    } catch (err) {
      await this.abort();
      if (err instanceof StorageError) throw err;
      throw this.host.failure('write', this.key, err);
    }
  }

  /** The whole object in one PutObject (conditional with ifAbsent). */
  private async putWhole(): Promise<void> {
    const body = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
    this.chunks = [];
    const { sdk, client } = await this.host.connection();
    try {
      await client.send(
        new sdk.PutObjectCommand({
          Bucket: this.host.bucket,
          Key: this.host.objectKey(this.key),
          Body: body,
          ContentLength: body.length,
          ContentMD5: contentMd5(body),
          ...(this.options.ifAbsent ? { IfNoneMatch: '*' } : {}),
        }),
      );
    } catch (err) {
      const { name, status } = s3ErrorCode(err);
      if (this.options.ifAbsent && (status === 412 || name === 'PreconditionFailed'))
        throw new StorageExistsError(this.host.location, this.key);
      throw err;
    }
  }

  /** Uploads what is buffered as the last part, waits for every part, completes. */
  private async completeUpload(): Promise<void> {
    while (this.buffered > 0) await this.startPart(this.take(Math.min(this.buffered, this.partSize)));
    while (this.inflight.size > 0) await Promise.race(this.inflight);
    if (this.failed) throw this.failed;
    const uploadId = await this.startUpload();
    const parts = [...this.parts].sort((a, b) => a.PartNumber - b.PartNumber);
    const { sdk, client } = await this.host.connection();
    await client.send(
      new sdk.CompleteMultipartUploadCommand({
        Bucket: this.host.bucket,
        Key: this.host.objectKey(this.key),
        UploadId: uploadId,
        MultipartUpload: { Parts: parts },
      }),
    );
  }

  async abort(): Promise<void> {
    if (this.state === 'done' || this.state === 'aborted') return;
    this.state = 'aborted';
    this.chunks = [];
    await Promise.allSettled([...this.inflight]);
    if (this.upload === undefined) return;
    await this.upload.catch(() => undefined);
    if (this.uploadId === undefined) return;
    try {
      const { sdk, client } = await this.host.connection();
      await client.send(
        new sdk.AbortMultipartUploadCommand({
          Bucket: this.host.bucket,
          Key: this.host.objectKey(this.key),
          UploadId: this.uploadId,
        }),
      );
    } catch {
      // The store may be gone (that may be why we abort): removePrefix aborts what is left later.
    }
  }
}
