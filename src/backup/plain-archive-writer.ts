// Archive writer (plain): one archive as a directory tree, each file stored and compressed on its own.

import { chmod, mkdir, symlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { HostEntry } from '../hosts/data-host.js';
import { compressionExtension, defaultCompressionLevel } from '../storage/compression.js';
import { joinKey, type RepositoryStorage } from '../storage/storage.js';
import { hashName } from '../catalog/manifest.js';
import {
  manifestEntryFor,
  pieceAllocator,
  readEntryContent,
  type ArchiveWriter,
  type ArchiveWriterSettings,
  type EntryContent,
  type EntrySink,
} from './archive-writer.js';

/**
 * Writes one archive as a directory tree (plain format): every file stored on its own (key
 * `<prefix>/<path>`), compressed one by one when asked. Calls to `add` may run concurrently (one
 * per worker). On a local file system directories keep their modes and symlinks are made, so that
 * the backup can be started in place as BART's can; an object store has files only, and the
 * manifest records the directories and symlinks that restore recreates.
 */
export class PlainArchiveWriter implements ArchiveWriter {
  private readonly createdDirs = new Set<string>();
  private storedBytes = 0;
  private dataBytes = 0;
  /** The archive's directory on this host (POSIX storage), for directories, symlinks and worker copies. */
  private readonly root: string | undefined;

  constructor(
    private readonly storage: RepositoryStorage,
    private readonly prefix: string,
    private readonly archive: string,
    private readonly settings: ArchiveWriterSettings,
    private readonly sink: EntrySink,
  ) {
    this.root = storage.localPath(prefix);
  }

  private async ensureDir(path: string, mode = 0o700): Promise<void> {
    if (this.createdDirs.has(path)) return;
    await mkdir(path, { recursive: true, mode });
    this.createdDirs.add(path);
  }

  async add(entry: HostEntry, content?: EntryContent): Promise<void> {
    const manifestEntry = manifestEntryFor(entry, this.archive);
    const target = this.root !== undefined ? join(this.root, entry.path) : undefined;
    if (entry.type === 'dir') {
      if (target !== undefined) {
        await this.ensureDir(target);
        await chmod(target, (entry.mode & 0o777) | 0o700);
      }
      await this.sink(manifestEntry);
      return;
    }
    if (entry.type === 'symlink') {
      if (target !== undefined) {
        await this.ensureDir(dirname(target));
        await symlink(entry.linkTarget ?? '', target);
      }
      await this.sink(manifestEntry);
      return;
    }
    const key = joinKey(this.prefix, entry.path) + compressionExtension(this.settings.compression);
    if (
      target !== undefined &&
      this.settings.copyLocalFile &&
      content &&
      'host' in content &&
      content.host.description === 'local'
    ) {
      await this.ensureDir(dirname(target));
      const pages = content.pages;
      const result = await this.settings.copyLocalFile({
        source: content.path,
        target: target + compressionExtension(this.settings.compression),
        size: entry.size,
        method: this.settings.compression,
        level: this.settings.level ?? defaultCompressionLevel(this.settings.compression),
        ...(hashName(this.settings.checksum) ? { hash: hashName(this.settings.checksum)! } : {}),
        chunk: this.settings.unitSize,
        // The worker checks the pages (and reads failing ones again) as it copies them.
        ...(pages ? { pages: { firstBlock: pages.target.firstBlock, startLsn: pages.checker.startLsn } } : {}),
      });
      if (pages && result.pages) pages.checker.record(pages.target, result.pages.checked, result.pages.bad);
      if (result.checksum) manifestEntry.checksum = result.checksum;
      manifestEntry.storedSize = result.storedSize;
      this.storedBytes += result.storedSize;
      this.dataBytes += entry.size;
      await this.sink(manifestEntry);
      return;
    }
    // Not durable one by one: the transaction syncs the whole backup once before publishing it.
    const output = await this.storage.create(key, { durable: false, sizeHint: entry.size });
    let stored = 0;
    let checksum: string | undefined;
    try {
      const inflight: Promise<Buffer>[] = [];
      const writeHead = async () => {
        const out = await inflight.shift()!;
        await output.write(out);
        stored += out.length;
        this.settings.recycle?.(out);
      };
      const onPiece = async (piece: Buffer) => {
        inflight.push(this.settings.compress(piece));
        if (inflight.length >= 2) await writeHead();
      };
      // Bytes given whole may be none; the empty compressed stream is made below.
      const unit = () => this.settings.unitSize;
      const read = await readEntryContent(
        entry.size,
        content,
        this.settings.checksum,
        unit,
        async (piece) => {
          if (piece.length > 0) await onPiece(piece);
        },
        this.settings.hashThread,
        pieceAllocator(this.settings),
      );
      checksum = await read.checksum;
      // An empty file still needs a valid (empty) compressed stream for gzip/lz4/zstd -d.
      if (entry.size === 0 && this.settings.compression !== 'none' && inflight.length === 0 && stored === 0)
        await onPiece(Buffer.alloc(0));
      while (inflight.length > 0) await writeHead();
      await output.finish();
    } catch (err) {
      await output.abort();
      throw err;
    }
    if (checksum !== undefined) manifestEntry.checksum = checksum;
    manifestEntry.storedSize = stored;
    this.storedBytes += stored;
    this.dataBytes += entry.size;
    await this.sink(manifestEntry);
  }

  async finish() {
    return { storedBytes: this.storedBytes, dataBytes: this.dataBytes };
  }

  async abort(): Promise<void> {}
}
