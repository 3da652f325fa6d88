// Tar reader: a pull-based byte reader over decoded tar streams, and the reading of entry headers, for RESTORE.

/**
 * Reading a tar stream for RESTORE: a pull-based byte reader over decoded chunks (so file data is
 * passed on in the chunks it arrives in, never buffered whole), and the loop that reads an entry's
 * header(s) from it (the header format itself is storage/tar-header.ts's).
 */

import {
  isZeroBlock,
  parseTarHeader,
  TAR_BLOCK,
  TarExtensions,
  tarPadding,
  type TarHeader,
} from '../storage/tar-header.js';

/** Pulls exact byte counts out of a stream of chunks, holding at most one chunk. */
export class ByteReader {
  private chunk: Buffer = Buffer.alloc(0);
  private ended = false;
  /** Bytes consumed so far (position in the decoded stream since the reader started). */
  position = 0;

  constructor(private readonly source: AsyncIterator<Buffer>) {}

  private async fill(): Promise<boolean> {
    while (this.chunk.length === 0) {
      if (this.ended) return false;
      const next = await this.source.next();
      if (next.done) {
        this.ended = true;
        return false;
      }
      this.chunk = next.value;
    }
    return true;
  }

  /** Skips `n` bytes; false when the stream ends first. */
  async skip(n: number): Promise<boolean> {
    let left = n;
    while (left > 0) {
      if (!(await this.fill())) return false;
      const take = Math.min(left, this.chunk.length);
      this.chunk = this.chunk.subarray(take);
      this.position += take;
      left -= take;
    }
    return true;
  }

  /**
   * Reads exactly `n` bytes (copied when they span chunks). Undefined when the stream ends before
   * the first byte; an error when it ends in the middle.
   */
  async readExact(n: number): Promise<Buffer | undefined> {
    if (!(await this.fill())) return undefined;
    if (this.chunk.length >= n) {
      const out = this.chunk.subarray(0, n);
      this.chunk = this.chunk.subarray(n);
      this.position += n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let got = 0;
    while (got < n) {
      if (!(await this.fill())) throw new Error(`stream ended ${n - got} bytes short of a ${n}-byte block`);
      const take = Math.min(n - got, this.chunk.length);
      this.chunk.copy(out, got, 0, take);
      this.chunk = this.chunk.subarray(take);
      this.position += take;
      got += take;
    }
    return out;
  }

  /** Yields the next `n` bytes in the pieces they arrive in; throws if the stream ends first. */
  async *stream(n: number): AsyncGenerator<Buffer> {
    let left = n;
    while (left > 0) {
      if (!(await this.fill())) throw new Error(`stream ended ${left} bytes before the end of an entry`);
      const take = Math.min(left, this.chunk.length);
      const piece = this.chunk.subarray(0, take);
      this.chunk = this.chunk.subarray(take);
      this.position += take;
      left -= take;
      yield piece;
    }
  }
}

/**
 * Reads the next real entry header, folding pax and GNU long-name records into it. Undefined at
 * the end of the archive (a zero block or the end of the stream).
 */
export async function nextTarHeader(reader: ByteReader): Promise<TarHeader | undefined> {
  const extensions = new TarExtensions();
  for (;;) {
    const block = await reader.readExact(TAR_BLOCK);
    if (!block || isZeroBlock(block)) return undefined;
    const header = parseTarHeader(block);
    if (TarExtensions.isExtension(header)) {
      const data = await reader.readExact(header.size + tarPadding(header.size));
      if (!data) throw new Error('archive ended inside an extended header');
      extensions.add(header, data.subarray(0, header.size));
      continue;
    }
    return extensions.apply(header);
  }
}
