// Concept: the encrypted object format — header, chunk layout, nonces and associated data of an encrypted repository object.
//
// Every object of an encrypted repository is stored as
//
//   header (32 bytes) | chunk 0 | chunk 1 | ... | chunk n-1
//
// header: magic "PGBARTC1" (8) | format version u8 = 1 | chunk size log2 u8 (20 = 1 MiB) | 6 reserved zero bytes |
//         object salt (16 random bytes)
// chunk i: AES-256-GCM ciphertext of plaintext bytes [i*C, min((i+1)*C, size)) followed by its 16-byte tag; every
//         chunk but the last holds exactly C plaintext bytes; the last holds 0..C (an empty object has one empty
//         chunk). The object key is HKDF-SHA256(master key, salt = object salt, info = "pgbart object key v1").
//         The 12-byte nonce of chunk i is the chunk index as a big-endian u64 followed by a big-endian u32 that is 1
//         for the last chunk and 0 otherwise; the associated data is the 32 header bytes followed by the UTF-8
//         object name (the storage key, with a leading `<id>.partial/` written as `<id>/`, so publishing a backup by
//         renaming its directory keeps it valid).
// So a flipped byte fails its chunk's tag; a cut at a chunk boundary leaves a last chunk not sealed as the last;
// reordered or moved chunks fail (index in the nonce), and an object copied under another name fails (name in the
// associated data). Ranged reads decrypt only the chunks the range touches. docs/catalog-format.md describes it.

import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import { inPlaceGcm } from './native-gcm.js';

/** The first 8 bytes of every encrypted object. */
export const CIPHER_MAGIC = Buffer.from('PGBARTC1', 'latin1');
/** Version of this object format. */
export const CIPHER_FORMAT_VERSION = 1;
/** Bytes of the object header. */
export const HEADER_BYTES = 32;
/** Bytes of a GCM tag. */
export const TAG_BYTES = 16;
/** log2 of the plaintext bytes per chunk written (1 MiB: one cipher call per MiB keeps the per-call cost small). */
export const DEFAULT_CHUNK_LOG2 = 20;
/** The partial-backup suffix normalised away in the associated data (catalog/layout.ts's PARTIAL_SUFFIX). */
const PARTIAL_COMPONENT = /^(\d+)\.partial\//;

/** A parsed object header. */
export interface ObjectHeader {
  /** The header's 32 bytes, part of every chunk's associated data. */
  bytes: Buffer;
  /** Plaintext bytes per chunk. */
  chunkSize: number;
  /** The per-object key derived from the master key and the object salt. */
  key: Buffer;
}

/** A fresh header (random object salt) for a new object. */
export function newObjectHeader(masterKey: Buffer, chunkLog2 = DEFAULT_CHUNK_LOG2): ObjectHeader {
  const bytes = Buffer.alloc(HEADER_BYTES);
  CIPHER_MAGIC.copy(bytes, 0);
  bytes[8] = CIPHER_FORMAT_VERSION;
  bytes[9] = chunkLog2;
  randomBytes(16).copy(bytes, 16);
  return { bytes, chunkSize: 2 ** chunkLog2, key: objectKey(masterKey, bytes.subarray(16, 32)) };
}

/** Parses a stored header; a string saying what is wrong when it is not one of ours. */
export function parseObjectHeader(masterKey: Buffer, bytes: Buffer): ObjectHeader | string {
  if (bytes.length < HEADER_BYTES) return 'shorter than an encrypted object header (truncated, or not encrypted)';
  if (!bytes.subarray(0, 8).equals(CIPHER_MAGIC)) return 'not an encrypted pgbart object (bad magic)';
  if (bytes[8] !== CIPHER_FORMAT_VERSION)
    return `encrypted with object format ${bytes[8]}, this pgbart reads ${CIPHER_FORMAT_VERSION}`;
  const log2 = bytes[9]!;
  if (log2 < 12 || log2 > 24 || bytes.readUInt16BE(10) !== 0 || bytes.readUInt32BE(12) !== 0)
    return 'damaged encrypted object header';
  const header = Buffer.from(bytes.subarray(0, HEADER_BYTES));
  return { bytes: header, chunkSize: 2 ** log2, key: objectKey(masterKey, header.subarray(16, 32)) };
}

function objectKey(masterKey: Buffer, salt: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', masterKey, salt, 'pgbart object key v1', 32));
}

/** The associated data of an object's chunks: header bytes + normalised object name. */
export function associatedData(header: ObjectHeader, name: string): Buffer {
  return Buffer.concat([header.bytes, Buffer.from(name.replace(PARTIAL_COMPONENT, '$1/'), 'utf8')]);
}

function nonce(index: number, last: boolean): Buffer {
  const n = Buffer.alloc(12);
  n.writeBigUInt64BE(BigInt(index), 0);
  n.writeUInt32BE(last ? 1 : 0, 8);
  return n;
}

/**
 * Bytes encrypted per cipher call by {@link sealChunkInPlace} when the in-place addon is not there (native-gcm.ts):
 * each call's output is fresh memory, copied back into the chunk. With bin/bart.js's malloc settings (freed memory is
 * kept for reuse, not unmapped), 256 KiB calls cost 0.35 CPU-s per GiB here against 0.46 for 32 KiB and 0.38 for
 * 1 MiB (`openssl speed`: 0.26); without those settings, slices above 64 KiB came back as fresh pages every call and
 * cost several times the AES work.
 */
const SEAL_SLICE = 256 * 1024;

/**
 * Encrypts chunk `index` in place: `chunk` holds the plaintext and then the ciphertext (GCM is a stream mode:
 * as many bytes as the plaintext, stored before the tag); returns the tag. The chunk's buffer is reused by the caller,
 * so no fresh MiB is needed per chunk. The in-place addon does it without any copy; node:crypto otherwise.
 */
export function sealChunkInPlace(
  header: ObjectHeader,
  aad: Buffer,
  index: number,
  last: boolean,
  chunk: Uint8Array,
): Buffer {
  const gcm = inPlaceGcm();
  if (gcm) {
    const tag = Buffer.allocUnsafe(TAG_BYTES);
    gcm.seal(header.key, nonce(index, last), aad, chunk, tag);
    return tag;
  }
  const cipher = createCipheriv('aes-256-gcm', header.key, nonce(index, last));
  cipher.setAAD(aad);
  for (let at = 0; at < chunk.length; at += SEAL_SLICE) {
    const end = Math.min(chunk.length, at + SEAL_SLICE);
    const sealed = cipher.update(chunk.subarray(at, end));
    // AES-GCM returns exactly as many bytes as it was given; anything else would misplace ciphertext.
    if (sealed.length !== end - at)
      throw new Error(`AES-GCM returned ${sealed.length} bytes for ${end - at} (internal error)`);
    chunk.set(sealed, at);
  }
  cipher.final();
  return cipher.getAuthTag();
}

/** Bytes decrypted per cipher call by {@link openChunkInPlace}: as {@link SEAL_SLICE}, for the same reasons. */
const OPEN_SLICE = 256 * 1024;

/**
 * Authenticates and decrypts chunk `index` in place: `sealed` holds the chunk as stored (ciphertext, then its
 * 16-byte tag); on success its first `sealed.length - 16` bytes are the plaintext. False when the tag does not
 * authenticate the chunk (altered, truncated, moved, or not the last chunk when `last` says it is): the buffer then
 * holds garbage that must not be used. The caller's buffer is reused from chunk to chunk, so no fresh MiB per chunk.
 */
export function openChunkInPlace(
  header: ObjectHeader,
  aad: Buffer,
  index: number,
  last: boolean,
  sealed: Uint8Array,
): boolean {
  if (sealed.length < TAG_BYTES) return false;
  const body = sealed.length - TAG_BYTES;
  const gcm = inPlaceGcm();
  if (gcm) return gcm.open(header.key, nonce(index, last), aad, sealed.subarray(0, body), sealed.subarray(body));
  const decipher = createDecipheriv('aes-256-gcm', header.key, nonce(index, last));
  decipher.setAAD(aad);
  // The tag is read before the body is overwritten (it lies after it, so it is not touched either way).
  decipher.setAuthTag(Buffer.from(sealed.buffer, sealed.byteOffset + body, TAG_BYTES));
  for (let at = 0; at < body; at += OPEN_SLICE) {
    const end = Math.min(body, at + OPEN_SLICE);
    const opened = decipher.update(sealed.subarray(at, end));
    if (opened.length !== end - at)
      throw new Error(`AES-GCM returned ${opened.length} bytes for ${end - at} (internal error)`);
    sealed.set(opened, at);
  }
  try {
    decipher.final();
  } catch {
    return false;
  }
  return true;
}

/**
 * Decrypts one chunk fed in pieces as they arrive (no copy joins them first). Nothing of the plaintext is
 * released before {@link ChunkOpener.finish} has checked the tag: a caller only ever sees authenticated bytes.
 */
export class ChunkOpener {
  private readonly decipher;
  private readonly parts: Buffer[] = [];

  constructor(header: ObjectHeader, aad: Buffer, index: number, last: boolean) {
    this.decipher = createDecipheriv('aes-256-gcm', header.key, nonce(index, last));
    this.decipher.setAAD(aad);
  }

  /** Ciphertext bytes of the chunk (its tag excluded), in order. */
  update(ciphertext: Uint8Array): void {
    if (ciphertext.length > 0) this.parts.push(this.decipher.update(ciphertext));
  }

  /** The chunk's plaintext pieces when `tag` authenticates all that was fed; undefined otherwise. */
  finish(tag: Buffer): Buffer[] | undefined {
    if (tag.length !== TAG_BYTES) return undefined;
    this.decipher.setAuthTag(tag);
    try {
      this.decipher.final();
    } catch {
      return undefined;
    }
    return this.parts;
  }
}

/** Stored bytes of an object of `plainSize` bytes. */
export function storedSize(plainSize: number, chunkSize: number): number {
  const chunks = Math.max(1, Math.ceil(plainSize / chunkSize));
  return HEADER_BYTES + plainSize + chunks * TAG_BYTES;
}

/** Plaintext bytes of a stored object of `stored` bytes; undefined when no object has that size (truncated). */
export function plainSize(stored: number, chunkSize: number): number | undefined {
  const body = stored - HEADER_BYTES;
  if (body < TAG_BYTES) return undefined;
  const sealedChunk = chunkSize + TAG_BYTES;
  const full = Math.floor(body / sealedChunk);
  const rest = body % sealedChunk;
  if (rest === 0) return full * chunkSize;
  if (rest < TAG_BYTES) return undefined;
  return full * chunkSize + rest - TAG_BYTES;
}

/**
 * The header and plaintext size of a stored object of `stored` bytes that begins with `head`; or, as text, what is
 * wrong with it. Every reader of encrypted objects (streams, positioned reads) checks an object's shape here.
 */
export function objectShape(
  masterKey: Buffer,
  head: Buffer,
  stored: number,
): { header: ObjectHeader; plain: number } | string {
  const header = parseObjectHeader(masterKey, head);
  if (typeof header === 'string') return header;
  const plain = plainSize(stored, header.chunkSize);
  if (plain === undefined) return `${stored} bytes is not the size of a whole encrypted object (truncated)`;
  return { header, plain };
}

/** What is wrong with chunk `index` when its tag does not authenticate it. */
export function chunkNotAuthentic(index: number): string {
  return `encrypted chunk ${index} does not authenticate (altered, truncated, or not written under this name with this key)`;
}

/** What is wrong with an object that ends inside chunk `index`. */
export function chunkCutShort(index: number): string {
  return `ends inside encrypted chunk ${index} (truncated)`;
}

/** Index of the last chunk of an object of `plain` bytes. */
export function lastChunkIndex(plain: number, chunkSize: number): number {
  return Math.max(0, Math.ceil(plain / chunkSize) - 1);
}
