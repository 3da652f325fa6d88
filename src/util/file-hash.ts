// Concept: file checksums — the digest recorded for every backed-up file (CRC-32C, SHA-256 or MD5), one interface.

import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { crc32c } from './crc32c.js';

const require = createRequire(import.meta.url);
/** XXH64 (native, streaming): the second half of the CRC32C file checksum, and the catalog's artifact checksum. */
export const { Xxh64 } = require('@node-rs/xxhash') as {
  Xxh64: new (seed?: bigint) => { update(d: Uint8Array): unknown; digest(): bigint };
};

/** How a file-checksum algorithm is named inside the code (the catalog says CRC32C, SHA256, MD5). */
export type FileHashName = 'crc32c' | 'sha256' | 'md5';

/** A running file checksum: fed the file's bytes in order, then asked once for its hex digest. */
export interface FileHash {
  /** Adds the next bytes of the file. */
  update(data: Uint8Array): FileHash;
  /** The checksum of everything fed, as lowercase hex; the hash is not to be fed again afterwards. */
  digest(encoding: 'hex'): string;
}

/**
 * The default file checksum, `CRC32C`: 24 hex digits, the file's CRC-32C in PostgreSQL's backup-manifest form (the
 * 32-bit value's four bytes in little-endian order, which is what `pg_basebackup --manifest-checksums=CRC32C` writes
 * on the machines PostgreSQL runs on, and what `pg_verifybackup` compares: the first 8 digits go to
 * `backup_manifest`), followed by the file's XXH64 (seed 0, 16 digits, big-endian).
 *
 * Why not the CRC alone: a CRC is linear, so a file that ends with the CRC-32C of what precedes it, then zeros, has
 * the same CRC-32C whatever that content is — PostgreSQL's `global/pg_control` and `pg_filenode.map` are such files,
 * and RESTORE --delta kept a stale pg_control over the backup's because of it (test delta-restore). Verification
 * against damage would be fine with the CRC; "is this the same file" is not. XXH64 is not linear and costs less than
 * the CRC (~14 GB/s here).
 */
class Crc32cHash implements FileHash {
  private crc = 0;
  private readonly xxh = new Xxh64(0n);

  update(data: Uint8Array): FileHash {
    // The native functions want Buffers; a view of the same memory costs no copy.
    const bytes = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    this.crc = crc32c(bytes, this.crc);
    this.xxh.update(bytes);
    return this;
  }

  digest(): string {
    const out = Buffer.alloc(12);
    out.writeUInt32LE(this.crc >>> 0, 0);
    out.writeBigUInt64BE(this.xxh.digest(), 4);
    return out.toString('hex');
  }
}

/** The CRC-32C part of a `CRC32C` file checksum, as `backup_manifest` and `pg_verifybackup` want it. */
export function crc32cPart(checksum: string): string {
  return checksum.slice(0, 8);
}

/** A new running checksum of the named algorithm. */
export function createFileHash(name: FileHashName): FileHash {
  return name === 'crc32c' ? new Crc32cHash() : createHash(name);
}
