// PostgreSQL backup manifest: a backup_manifest written as files are stored, for pg_verifybackup.

import { createHash } from 'node:crypto';
import type { ChecksumAlgorithm } from '../catalog/backup-info.js';
import type { RepositoryStorage, StorageWriter } from '../storage/storage.js';
import { crc32cPart } from '../util/file-hash.js';

/**
 * Writes a PostgreSQL-format `backup_manifest` (version 1) as files are stored, so that
 * PostgreSQL's own pg_verifybackup accepts an uncompressed plain backup. The manifest checksum
 * (SHA-256 of everything before the last line) is computed as we write.
 */
export class PgBackupManifestWriter {
  private readonly hash = createHash('sha256');
  private first = true;

  private constructor(
    private readonly output: StorageWriter,
    private readonly algorithm: ChecksumAlgorithm,
  ) {}

  /**
   * Starts writing the manifest `key` of `storage` (visible once {@link finish} completes it; not
   * durable on its own: the backup is synced as a whole before it is published).
   */
  static async create(
    storage: RepositoryStorage,
    key: string,
    algorithm: ChecksumAlgorithm,
  ): Promise<PgBackupManifestWriter> {
    const w = new PgBackupManifestWriter(await storage.create(key, { durable: false }), algorithm);
    await w.write('{ "PostgreSQL-Backup-Manifest-Version": 1,\n"Files": [');
    return w;
  }

  private async write(text: string): Promise<void> {
    this.hash.update(text);
    await this.output.write(Buffer.from(text));
  }

  /** Adds one file (path relative to the data directory, as PostgreSQL names it). */
  async addFile(path: string, size: number, mtime: number, checksum: string | undefined): Promise<void> {
    const modified = new Date(mtime * 1000)
      .toISOString()
      .replace('T', ' ')
      .replace(/\.\d+Z$/, ' GMT');
    // pg_verifybackup knows CRC32C and SHA256 (both written in its own form) but not MD5: an MD5 backup's manifest
    // carries sizes only.
    const known = this.algorithm === 'CRC32C' || this.algorithm === 'SHA256';
    const value = checksum && this.algorithm === 'CRC32C' ? crc32cPart(checksum) : checksum;
    const sum = known && value ? `, "Checksum-Algorithm": "${this.algorithm}", "Checksum": "${value}"` : '';
    await this.write(
      `${this.first ? '\n' : ',\n'}{ "Path": ${JSON.stringify(path)}, "Size": ${size}, "Last-Modified": "${modified}"${sum} }`,
    );
    this.first = false;
  }

  /** Writes the WAL range and the manifest checksum, and closes. */
  async finish(timeline: number, startLsn: string, endLsn: string): Promise<void> {
    await this.write(
      `\n],\n"WAL-Ranges": [\n{ "Timeline": ${timeline}, "Start-LSN": "${startLsn}", "End-LSN": "${endLsn}" }\n],\n`,
    );
    const digest = this.hash.digest('hex');
    await this.output.write(Buffer.from(`"Manifest-Checksum": "${digest}"}\n`));
    await this.output.finish();
  }

  /** Drops the manifest (the backup failed). */
  async abort(): Promise<void> {
    await this.output.abort();
  }
}
