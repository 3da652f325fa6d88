// Tar header: ustar headers encoded and decoded, tar blocks and padding.

/** Size of a tar block. */
export const TAR_BLOCK = 512;

/** What one tar entry describes. */
export interface TarEntryHeader {
  path: string;
  type: 'file' | 'dir' | 'symlink';
  size: number;
  mode: number;
  /** Epoch seconds. */
  mtime: number;
  linkTarget?: string;
}

/** Bytes of zero padding after `size` bytes of content. */
export function tarPadding(size: number): number {
  return (TAR_BLOCK - (size % TAR_BLOCK)) % TAR_BLOCK;
}

function writeOctal(buf: Buffer, offset: number, width: number, value: number): void {
  const digits = value.toString(8);
  if (digits.length <= width - 1) {
    buf.write(digits.padStart(width - 1, '0') + '\0', offset, width, 'ascii');
    return;
  }
  // GNU base-256 for values that don't fit (sizes over 8 GiB).
  buf[offset] = 0x80;
  let v = BigInt(value);
  for (let i = offset + width - 1; i > offset; i--) {
    buf[i] = Number(v & 0xffn);
    v >>= 8n;
  }
}

/**
 * Reads a numeric header field: octal text, or GNU base-256 (high bit of the first byte set) for
 * values that do not fit (sizes over 8 GiB).
 */
export function readTarNumber(buf: Buffer, offset: number, width: number): number {
  if ((buf[offset]! & 0x80) !== 0) {
    let v = 0n;
    for (let i = offset + 1; i < offset + width; i++) v = (v << 8n) | BigInt(buf[i]!);
    return Number(v);
  }
  const text = buf
    .toString('ascii', offset, offset + width)
    .replace(/\0.*$/s, '')
    .trim();
  return text === '' ? 0 : parseInt(text, 8);
}

function splitUstarPath(path: string): { name: string; prefix: string } | undefined {
  if (Buffer.byteLength(path) <= 100) return { name: path, prefix: '' };
  for (let i = path.length - 1; i > 0; i--) {
    if (path[i] !== '/') continue;
    const prefix = path.slice(0, i);
    const name = path.slice(i + 1);
    if (Buffer.byteLength(prefix) <= 155 && Buffer.byteLength(name) <= 100 && name !== '') return { name, prefix };
  }
  return undefined;
}

function rawHeader(
  name: string,
  prefix: string,
  typeflag: string,
  size: number,
  mode: number,
  mtime: number,
  link: string,
): Buffer {
  const h = Buffer.alloc(TAR_BLOCK);
  h.write(name, 0, 100, 'utf8');
  writeOctal(h, 100, 8, mode & 0o7777);
  writeOctal(h, 108, 8, 0);
  writeOctal(h, 116, 8, 0);
  writeOctal(h, 124, 12, size);
  writeOctal(h, 136, 12, Math.max(0, Math.floor(mtime)));
  h.write(typeflag, 156, 1, 'ascii');
  h.write(link, 157, 100, 'utf8');
  h.write('ustar\0', 257, 6, 'ascii');
  h.write('00', 263, 2, 'ascii');
  h.write(prefix, 345, 155, 'utf8');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < TAR_BLOCK; i++) sum += h[i]!;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'ascii');
  return h;
}

/**
 * Encodes the header block(s) of one entry: a ustar header, preceded by a pax header when the
 * path or link target does not fit ustar's fields.
 */
export function encodeTarHeader(entry: TarEntryHeader): Buffer {
  const path = entry.type === 'dir' && !entry.path.endsWith('/') ? entry.path + '/' : entry.path;
  const typeflag = entry.type === 'file' ? '0' : entry.type === 'dir' ? '5' : '2';
  const size = entry.type === 'file' ? entry.size : 0;
  const link = entry.linkTarget ?? '';
  const split = splitUstarPath(path);
  if (split && Buffer.byteLength(link) <= 100) {
    return rawHeader(split.name, split.prefix, typeflag, size, entry.mode, entry.mtime, link);
  }
  const records: string[] = [];
  const record = (key: string, value: string) => {
    const body = ` ${key}=${value}\n`;
    let len = Buffer.byteLength(body) + 1;
    while (String(len).length + Buffer.byteLength(body) !== len) len = String(len).length + Buffer.byteLength(body);
    records.push(`${len}${body}`);
  };
  if (!split) record('path', path);
  if (Buffer.byteLength(link) > 100) record('linkpath', link);
  const pax = Buffer.from(records.join(''));
  const paxHeader = rawHeader('PaxHeader', '', 'x', pax.length, 0o644, entry.mtime, '');
  const main = rawHeader(
    split?.name ?? path.slice(-100),
    split?.prefix ?? '',
    typeflag,
    size,
    entry.mode,
    entry.mtime,
    link.slice(0, 100),
  );
  return Buffer.concat([paxHeader, pax, Buffer.alloc(tarPadding(pax.length)), main]);
}

/** Header block(s) of a regular file member. */
export function tarFileHeader(path: string, size: number, mode: number, mtime: number): Buffer {
  return encodeTarHeader({ path, type: 'file', size, mode, mtime });
}

/**
 * A parsed tar header. Extension headers (pax, GNU long names) come back as such; {@link TarExtensions}
 * folds them into the entry that follows.
 */
export interface TarHeader {
  /** Path without a leading `./` or trailing `/`. */
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'hardlink' | 'pax' | 'pax-global' | 'gnu-longname' | 'gnu-longlink' | 'other';
  /** The raw type flag (`'0'`, `'\0'`, `'5'`, ...), for callers stricter than {@link type}. */
  typeflag: string;
  size: number;
  mode: number;
  /** Epoch seconds. */
  mtime: number;
  linkTarget: string;
}

/** A NUL-terminated (or field-filling) string field. */
function cString(buf: Buffer, start: number, length: number): string {
  const field = buf.subarray(start, start + length);
  const nul = field.indexOf(0);
  return field.subarray(0, nul < 0 ? field.length : nul).toString('utf8');
}

/** True for an all-zero 512-byte block (the end-of-archive marker). */
export function isZeroBlock(block: Buffer): boolean {
  for (let i = 0; i < TAR_BLOCK; i++) if (block[i] !== 0) return false;
  return true;
}

/** Drops leading `./` and trailing `/` (tar writes both; the manifest has neither). */
function normalizeTarPath(raw: string): string {
  let p = raw;
  while (p.startsWith('./')) p = p.slice(2);
  while (p.length > 1 && p.endsWith('/')) p = p.slice(0, -1);
  return p;
}

/**
 * Parses one 512-byte header block (ustar, GNU or old-style; sizes in octal or GNU base-256). Throws
 * when its checksum is wrong: a damaged archive, or a stream that lost its framing.
 */
export function parseTarHeader(block: Buffer): TarHeader {
  let sum = 0;
  for (let i = 0; i < TAR_BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : block[i]!;
  const stored = readTarNumber(block, 148, 8);
  if (stored !== sum) throw new Error(`tar header checksum mismatch (stored ${stored}, computed ${sum})`);
  const name = cString(block, 0, 100);
  // Only ustar (and GNU's "ustar  ") headers have a prefix field; old tar headers keep other data there.
  const magic = cString(block, 257, 6);
  const prefix = magic.startsWith('ustar') ? cString(block, 345, 155) : '';
  const flag = String.fromCharCode(block[156]!);
  const type: TarHeader['type'] =
    flag === '0' || flag === '\0' || flag === '7'
      ? 'file'
      : flag === '5'
        ? 'dir'
        : flag === '2'
          ? 'symlink'
          : flag === '1'
            ? 'hardlink'
            : flag === 'x'
              ? 'pax'
              : flag === 'g'
                ? 'pax-global'
                : flag === 'L'
                  ? 'gnu-longname'
                  : flag === 'K'
                    ? 'gnu-longlink'
                    : 'other';
  return {
    path: normalizeTarPath(prefix ? `${prefix}/${name}` : name),
    // Pre-POSIX tars mark a directory only by the trailing slash of a regular-file entry.
    type: type === 'file' && name.endsWith('/') ? 'dir' : type,
    typeflag: flag,
    size: readTarNumber(block, 124, 12),
    mode: readTarNumber(block, 100, 8),
    mtime: readTarNumber(block, 136, 12),
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
 * Folds the extension headers before an entry (pax `path`/`linkpath`/`size` records, GNU `L`/`K`
 * long names) into that entry's header. Feed every header to {@link isExtension}; pass the body of
 * the extensions to {@link add} and the real entry's header to {@link apply}. Global pax headers are
 * read past (nothing pgbart reads needs them).
 */
export class TarExtensions {
  private longPath: string | undefined;
  private longLink: string | undefined;
  private paxSize: number | undefined;

  /** True when the header's body describes the next entry instead of being an entry itself. */
  static isExtension(header: TarHeader): boolean {
    const t = header.type;
    return t === 'pax' || t === 'pax-global' || t === 'gnu-longname' || t === 'gnu-longlink';
  }

  /** Records an extension header's body (`size` bytes, without padding). */
  add(header: TarHeader, body: Buffer): void {
    if (header.type === 'pax') {
      const rec = parsePaxRecords(body);
      if (rec.has('path')) this.longPath = rec.get('path');
      if (rec.has('linkpath')) this.longLink = rec.get('linkpath');
      if (rec.has('size')) this.paxSize = Number(rec.get('size'));
    } else if (header.type === 'gnu-longname') {
      this.longPath = cString(body, 0, body.length);
    } else if (header.type === 'gnu-longlink') {
      this.longLink = cString(body, 0, body.length);
    }
  }

  /** Applies what was recorded to the entry's header (in place) and forgets it for the next entry. */
  apply(header: TarHeader): TarHeader {
    if (this.longPath !== undefined) header.path = normalizeTarPath(this.longPath);
    if (this.longLink !== undefined) header.linkTarget = this.longLink;
    if (this.paxSize !== undefined) header.size = this.paxSize;
    this.longPath = this.longLink = this.paxSize = undefined;
    return header;
  }
}
