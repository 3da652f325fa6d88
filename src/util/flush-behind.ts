import { fdatasyncSync } from 'node:fs';

/**
 * Bytes written to one file between early flushes. On a machine with much memory the kernel starts
 * writeback only at its dirty threshold (10% of RAM) or after 30 s: without early flushes a backup
 * or restore writes next to nothing to disk until its final fsync, then waits for all of it at once
 * instead of overlapping the disk with reading, hashing and (de)compressing.
 */
export const FLUSH_EVERY_BYTES = 64 * 1024 * 1024;

/**
 * Counts the bytes written to a file descriptor and fdatasyncs it every {@link FLUSH_EVERY_BYTES},
 * for writers that block anyway (worker threads): that worker waits for its share of the disk while
 * the others go on. Durability still comes from the final fsync; this only spreads the writeback.
 */
export class SyncFlushBehind {
  private unflushed = 0;

  constructor(private readonly fd: number) {}

  wrote(bytes: number): void {
    this.unflushed += bytes;
    if (this.unflushed < FLUSH_EVERY_BYTES) return;
    this.unflushed = 0;
    fdatasyncSync(this.fd);
  }
}
