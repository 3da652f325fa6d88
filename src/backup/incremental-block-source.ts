// Incremental backup: a data host that shows each file as its selected blocks, read in batches.

import { crc32c } from '../util/crc32c.js';
import type { DataHost, HostEntry, HostFile } from '../hosts/data-host.js';
import { runBlocks } from '../catalog/incremental-format.js';
import { BLOCK_SIZE } from '../postgres/constants.js';
import type { PageVerifier } from '../postgres/page-checksum.js';
import type { PageChecker, PageCheckTarget } from './page-check.js';

/** What to read of one file: its blocks in `runs`, and where the per-block CRCs go. */
export interface BlockSelection {
  runs: Array<[number, number]>;
  /** Filled while the blocks are read (stored order), 8 hex digits each. */
  crcs: string[];
  /** Verify the blocks read against their data checksums (a relation file, when the cluster has them). */
  pages?: { checker: PageChecker; target: PageCheckTarget };
}

/**
 * A {@link DataHost} that shows each selected file as the concatenation of its selected blocks,
 * so the ordinary archive writers store an incremental file's changed blocks without knowing about
 * blocks. Blocks are read from the real host in batches of up to `batchBlocks` (consecutive blocks
 * of a run in one read). A block the file no longer has (the relation was truncated while we read)
 * reads as zeros: WAL replay from the backup's start rewrites it, as with full backups.
 */
export class BlockSourceHost implements DataHost {
  readonly description: string;
  private readonly selections = new Map<string, BlockSelection>();

  constructor(
    private readonly host: DataHost,
    private readonly batchBlocks: number,
  ) {
    this.description = host.description;
  }

  /** Registers the blocks of `path` (an absolute path on the host) to present. */
  select(path: string, selection: BlockSelection): void {
    this.selections.set(path, selection);
  }

  walk(root: string): AsyncIterable<HostEntry> {
    return this.host.walk(root);
  }

  async open(path: string): Promise<HostFile | undefined> {
    const selection = this.selections.get(path);
    this.selections.delete(path);
    if (!selection) return this.host.open(path);
    // An unchanged relation file is listed with no blocks: nothing to open.
    const file = selection.runs.length === 0 ? undefined : await this.host.open(path, { random: true });
    return new BlockReader(file, selection, this.batchBlocks, this.host, path);
  }

  async close(): Promise<void> {}
}

/** Reads the selected blocks of one file as one contiguous stream of bytes. */
class BlockReader implements HostFile {
  private cache: Buffer = Buffer.alloc(0);
  /** Index (in stored order) of the first block in the cache. */
  private cacheFirst = 0;
  private cacheCount = 0;
  private readonly total: number;
  /** Stored index → block number, built lazily per run. */
  private readonly runStarts: number[] = [];

  /** Checks the blocks read, by their block numbers in the file (they are not contiguous). */
  private readonly verifier: PageVerifier | undefined;

  constructor(
    private readonly file: HostFile | undefined,
    private readonly selection: BlockSelection,
    private readonly batchBlocks: number,
    private readonly host: DataHost,
    private readonly path: string,
  ) {
    this.verifier = selection.pages?.checker.verifier(selection.pages.target);
    this.total = runBlocks(selection.runs);
    let at = 0;
    for (const [, count] of selection.runs) {
      this.runStarts.push(at);
      at += count;
    }
  }

  /** Block number of the stored block `index`, and how many blocks of its run follow it (itself included). */
  private locate(index: number): { block: number; left: number } {
    let lo = 0;
    let hi = this.runStarts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.runStarts[mid]! <= index) lo = mid;
      else hi = mid - 1;
    }
    const [first, count] = this.selection.runs[lo]!;
    const into = index - this.runStarts[lo]!;
    return { block: first + into, left: count - into };
  }

  private async load(index: number): Promise<void> {
    const count = Math.min(this.batchBlocks, this.total - index);
    if (this.cache.length < count * BLOCK_SIZE) this.cache = Buffer.alloc(count * BLOCK_SIZE);
    let filled = 0;
    while (filled < count) {
      const { block, left } = this.locate(index + filled);
      const n = Math.min(left, count - filled);
      const want = n * BLOCK_SIZE;
      const at = filled * BLOCK_SIZE;
      let got = 0;
      while (this.file && got < want) {
        const r = await this.file.read(this.cache, at + got, want - got, block * BLOCK_SIZE + got);
        if (r === 0) break;
        got += r;
      }
      if (got < want) this.cache.fill(0, at + got, at + want);
      filled += n;
    }
    for (let i = 0; i < count; i++) {
      const stored = index + i;
      if (this.selection.crcs[stored] === undefined) {
        this.selection.crcs[stored] = (crc32c(this.cache.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE)) >>> 0)
          .toString(16)
          .padStart(8, '0');
        this.verifier?.checkBlock(this.locate(stored).block, this.cache, i * BLOCK_SIZE);
      }
    }
    this.cacheFirst = index;
    this.cacheCount = count;
  }

  async read(buffer: Buffer, offset: number, length: number, position: number): Promise<number> {
    let done = 0;
    while (done < length) {
      const p = position + done;
      const index = Math.floor(p / BLOCK_SIZE);
      if (index >= this.total) break;
      if (index < this.cacheFirst || index >= this.cacheFirst + this.cacheCount) await this.load(index);
      const within = p - this.cacheFirst * BLOCK_SIZE;
      const n = Math.min(length - done, this.cacheCount * BLOCK_SIZE - within);
      this.cache.copy(buffer, offset + done, within, within + n);
      done += n;
    }
    return done;
  }

  async close(): Promise<void> {
    await this.file?.close();
    const pages = this.selection.pages;
    if (pages && this.verifier) await pages.checker.settle(pages.target, this.verifier, this.host, this.path);
  }
}
