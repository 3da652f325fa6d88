/**
 * Reading a tar stream for RESTORE: a pull-based byte reader over decoded chunks (so file data is
 * passed on in the chunks it arrives in, never buffered whole) and a ustar/pax header parser.
 */

import { readTarNumber, tarPadding } from '../storage/tar-header.js';

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

/** A parsed tar header (after applying any pax/GNU long-name records that precede it). */
export interface TarHeader {
  /** Path without a leading `./` or trailing `/`. */
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'hardlink' | 'pax' | 'pax-global' | 'gnu-longname' | 'gnu-longlink' | 'other';
  size: number;
  mode: number;
  linkTarget: string;
}

function cString(buf: Buffer, start: number, length: number): string {
  const field = buf.subarray(start, start + length);
  const nul = field.indexOf(0);
  return field.subarray(0, nul < 0 ? field.length : nul).toString('utf8');
}

/** True for an all-zero 512-byte block (the end-of-archive marker). */
export function isZeroBlock(block: Buffer): boolean {
  for (let i = 0; i < 512; i++) if (block[i] !== 0) return false;
  return true;
}

function normalizePath(raw: string): string {
  let p = raw;
  while (p.startsWith('./')) p = p.slice(2);
  while (p.length > 1 && p.endsWith('/')) p = p.slice(0, -1);
  return p;
}

/** Parses one 512-byte header block; throws when its checksum is wrong (a damaged archive). */
export function parseTarHeader(block: Buffer): TarHeader {
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : block[i]!;
  const stored = readTarNumber(block, 148, 8);
  if (stored !== sum) throw new Error(`tar header checksum mismatch (stored ${stored}, computed ${sum})`);
  const name = cString(block, 0, 100);
  const magic = cString(block, 257, 6);
  const prefix = magic.startsWith('ustar') ? cString(block, 345, 155) : '';
  const flag = String.fromCharCode(block[156]!);
  const type: TarHeader['type'] =
    flag === '0' || flag === '\0' || flag === '7' ? 'file'
    : flag === '5' ? 'dir'
    : flag === '2' ? 'symlink'
    : flag === '1' ? 'hardlink'
    : flag === 'x' ? 'pax'
    : flag === 'g' ? 'pax-global'
    : flag === 'L' ? 'gnu-longname'
    : flag === 'K' ? 'gnu-longlink'
    : 'other';
  return {
    path: normalizePath(prefix ? `${prefix}/${name}` : name),
    type: type === 'file' && name.endsWith('/') ? 'dir' : type,
    size: readTarNumber(block, 124, 12),
    mode: readTarNumber(block, 100, 8),
    linkTarget: cString(block, 157, 100),
  };
}

/** Parses pax extended header records (`<len> <key>=<value>\n`). */
export function parsePaxRecords(data: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let pos = 0;
  while (pos < data.length) {
    const space = data.indexOf(0x20, pos);
    if (space < 0) break;
    const len = parseInt(data.subarray(pos, space).toString('ascii'), 10);
    if (!Number.isFinite(len) || len <= 0) break;
    const record = data.subarray(space + 1, pos + len - 1).toString('utf8');
    const eq = record.indexOf('=');
    if (eq > 0) out.set(record.slice(0, eq), record.slice(eq + 1));
    pos += len;
  }
  return out;
}

/**
 * Reads the next real entry header, folding pax and GNU long-name records into it. Undefined at
 * the end of the archive (a zero block or the end of the stream).
 */
export async function nextTarHeader(reader: ByteReader): Promise<TarHeader | undefined> {
  let longPath: string | undefined;
  let longLink: string | undefined;
  let paxSize: number | undefined;
  for (;;) {
    const block = await reader.readExact(512);
    if (!block || isZeroBlock(block)) return undefined;
    const header = parseTarHeader(block);
    if (header.type === 'pax' || header.type === 'pax-global' || header.type === 'gnu-longname' || header.type === 'gnu-longlink') {
      const data = await reader.readExact(header.size + tarPadding(header.size));
      if (!data) throw new Error('archive ended inside an extended header');
      const body = data.subarray(0, header.size);
      if (header.type === 'pax') {
        const rec = parsePaxRecords(body);
        if (rec.has('path')) longPath = rec.get('path');
        if (rec.has('linkpath')) longLink = rec.get('linkpath');
        if (rec.has('size')) paxSize = Number(rec.get('size'));
      } else if (header.type === 'gnu-longname') {
        longPath = cString(body, 0, body.length);
      } else if (header.type === 'gnu-longlink') {
        longLink = cString(body, 0, body.length);
      }
      continue;
    }
    if (longPath !== undefined) header.path = normalizePath(longPath);
    if (longLink !== undefined) header.linkTarget = longLink;
    if (paxSize !== undefined) header.size = paxSize;
    return header;
  }
}
