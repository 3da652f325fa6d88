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
  const text = buf.toString('ascii', offset, offset + width).replace(/\0.*$/s, '').trim();
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

function rawHeader(name: string, prefix: string, typeflag: string, size: number, mode: number, mtime: number, link: string): Buffer {
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
  const main = rawHeader(split?.name ?? path.slice(-100), split?.prefix ?? '', typeflag, size, entry.mode, entry.mtime, link.slice(0, 100));
  return Buffer.concat([paxHeader, pax, Buffer.alloc(tarPadding(pax.length)), main]);
}

/** Header block(s) of a regular file member. */
export function tarFileHeader(path: string, size: number, mode: number, mtime: number): Buffer {
  return encodeTarHeader({ path, type: 'file', size, mode, mtime });
}

/** Decodes a ustar header block (without pax handling); undefined for an all-zero end block. */
export function decodeTarHeader(block: Buffer): (TarEntryHeader & { typeflag: string }) | undefined {
  if (block.every((b) => b === 0)) return undefined;
  const stored = readTarNumber(block, 148, 8);
  const copy = Buffer.from(block);
  copy.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < TAR_BLOCK; i++) sum += copy[i]!;
  if (sum !== stored) throw new Error('tar header checksum mismatch');
  const cstr = (o: number, w: number) => block.toString('utf8', o, o + w).replace(/\0.*$/s, '');
  const name = cstr(0, 100);
  const prefix = cstr(345, 155);
  const typeflag = String.fromCharCode(block[156]!);
  const path = (prefix ? `${prefix}/${name}` : name).replace(/\/$/, '');
  const type = typeflag === '5' ? 'dir' : typeflag === '2' ? 'symlink' : 'file';
  const link = cstr(157, 100);
  return {
    path,
    type,
    typeflag,
    size: readTarNumber(block, 124, 12),
    mode: readTarNumber(block, 100, 8),
    mtime: readTarNumber(block, 136, 12),
    ...(link ? { linkTarget: link } : {}),
  };
}
