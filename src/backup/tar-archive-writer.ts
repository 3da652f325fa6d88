// Archive writer (tar): one tar archive as independently compressed units, with each entry's stored offset.

import type { HostEntry } from '../hosts/data-host.js';
import type { StorageWriter } from '../storage/storage.js';
import { artifactHasher, type ManifestFileEntry } from '../catalog/manifest.js';
import {
  manifestEntryFor,
  pieceAllocator,
  readEntryContent,
  type ArchiveWriter,
  type ArchiveWriterSettings,
  type EntryContent,
  type EntrySink,
} from './archive-writer.js';
import { encodeTarHeader, tarPadding, TAR_BLOCK } from '../storage/tar-header.js';
import { phaseTimes } from '../util/phase-times.js';

/** An entry whose offset or completion waits for a unit to be written. */
interface PendingEntry {
  entry: ManifestFileEntry;
  unitSkip: number;
  /** The file's checksum, possibly still computing in the hash thread. */
  checksum?: Promise<string | undefined>;
}

interface Unit {
  stored: Promise<Buffer>;
  starts: PendingEntry[];
  completes: PendingEntry[];
}

/**
 * Writes one tar archive as a sequence of independently compressed units (see
 * docs/catalog-format.md). Units compress in parallel in the worker pool and are written in order;
 * each manifest entry learns the stored offset of the unit its header starts in, so restore and
 * VERIFY-CHKSUM can decode any entry without reading what precedes it.
 */
export class TarArchiveWriter implements ArchiveWriter {
  private pieces: Buffer[] = [];
  private pieceBytes = 0;
  private starts: PendingEntry[] = [];
  private completes: PendingEntry[] = [];
  private readonly inflight: Unit[] = [];
  private storedBytes = 0;
  private dataBytes = 0;
  private readonly artifactHash = artifactHasher();
  private readonly alloc: ((size: number) => Buffer) | undefined;

  constructor(
    private readonly name: string,
    private readonly archive: string,
    private readonly output: StorageWriter,
    private readonly settings: ArchiveWriterSettings,
    private readonly sink: EntrySink,
  ) {
    this.alloc = pieceAllocator(settings);
  }

  async add(entry: HostEntry, content?: EntryContent): Promise<void> {
    const manifestEntry = manifestEntryFor(entry, this.archive);
    const isFile = entry.type === 'file';
    await this.pushBytes(Buffer.alloc(0)); // emits a full unit first, so unitSkip is exact
    const pending: PendingEntry = { entry: manifestEntry, unitSkip: this.pieceBytes };
    this.starts.push(pending);
    await this.pushBytes(encodeTarHeader({ ...manifestEntry, size: isFile ? entry.size : 0 }));
    if (isFile) {
      // The first piece fills the current unit exactly, so every later piece is a whole unit on its
      // own: no unit of a large file needs to be copied together from two pieces.
      const unitSize = this.settings.unitSize;
      let first = true;
      const pieceSize = () => {
        const room = first ? unitSize - (this.pieceBytes % unitSize) : unitSize;
        first = false;
        return room;
      };
      const { checksum } = await readEntryContent(
        entry.size,
        content,
        this.settings.checksum,
        pieceSize,
        (p) => this.pushBytes(p),
        this.settings.hashThread,
        this.alloc,
      );
      await this.pushBytes(Buffer.alloc(tarPadding(entry.size)));
      pending.checksum = checksum;
      this.dataBytes += entry.size;
    }
    this.completes.push(pending);
  }

  /** Appends tar stream bytes, cutting a unit whenever one is full. */
  private async pushBytes(data: Buffer): Promise<void> {
    let rest = data;
    for (;;) {
      if (this.pieceBytes >= this.settings.unitSize) await this.emitUnit();
      if (rest.length === 0) return;
      const take = Math.min(rest.length, this.settings.unitSize - this.pieceBytes);
      this.pieces.push(take === rest.length ? rest : rest.subarray(0, take));
      this.pieceBytes += take;
      rest = rest.subarray(take);
    }
  }

  private async emitUnit(): Promise<void> {
    if (this.pieceBytes === 0 && this.starts.length === 0 && this.completes.length === 0) return;
    const data = this.pieces.length === 1 ? this.pieces[0]! : this.joinPieces();
    this.inflight.push({ stored: this.settings.compress(data), starts: this.starts, completes: this.completes });
    this.pieces = [];
    this.pieceBytes = 0;
    this.starts = [];
    this.completes = [];
    while (this.inflight.length >= this.settings.maxInFlight) await this.writeHead();
  }

  /** The unit's pieces as one buffer: a reused one when the unit is whole (all but the last are). */
  private joinPieces(): Buffer {
    if (!this.settings.unitBuffer || this.pieceBytes !== this.settings.unitSize)
      return Buffer.concat(this.pieces, this.pieceBytes);
    const joined = this.settings.unitBuffer();
    let at = 0;
    for (const piece of this.pieces) {
      joined.set(piece, at);
      at += piece.length;
    }
    return joined;
  }

  private async writeHead(): Promise<void> {
    const unit = this.inflight[0]!;
    const stored = await phaseTimes.wait('compress wait', unit.stored);
    this.inflight.shift();
    const compressed = this.settings.compression !== 'none';
    for (const p of unit.starts) {
      // Uncompressed: the header's exact byte position. Compressed: the unit's position plus a skip.
      p.entry.offset = compressed ? this.storedBytes : this.storedBytes + p.unitSkip;
      if (compressed && p.unitSkip > 0) p.entry.unitSkip = p.unitSkip;
    }
    await phaseTimes.wait('write', this.output.write(stored));
    phaseTimes.sync('checksum', () => this.artifactHash.update(stored));
    this.storedBytes += stored.length;
    this.settings.recycle?.(stored);
    for (const p of unit.completes) {
      const checksum = p.checksum ? await phaseTimes.wait('checksum wait', p.checksum) : undefined;
      if (checksum !== undefined) p.entry.checksum = checksum;
      await this.sink(p.entry);
    }
  }

  async finish() {
    await this.pushBytes(Buffer.alloc(2 * TAR_BLOCK)); // end-of-archive marker
    await this.emitUnit();
    while (this.inflight.length > 0) await this.writeHead();
    await phaseTimes.wait('write', this.output.finish());
    return {
      artifact: { artifact: this.name, size: this.storedBytes, checksum: this.artifactHash.hex() },
      storedBytes: this.storedBytes,
      dataBytes: this.dataBytes,
    };
  }

  async abort(): Promise<void> {
    await Promise.allSettled(this.inflight.map((u) => u.stored));
    await this.output.abort();
  }
}
