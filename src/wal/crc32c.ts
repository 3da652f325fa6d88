// CRC-32C: Castagnoli checksums of WAL records, native for large ranges, table-driven for small.

import { crc32c as nativeCrc32c } from '../util/crc32c.js';

/**
 * CRC-32C (Castagnoli) over a byte range, continuing from a previous value (0 to start), in the
 * standard form: the result equals PostgreSQL's FIN_CRC32C(COMP_CRC32C(INIT_CRC32C, ...)).
 *
 * Why two implementations: the native call is fast per byte but costs a fixed few hundred ns
 * per call plus a Buffer view, which dominates for the many tiny WAL records; a table-driven
 * (slicing-by-8/16) loop in JS needs no allocation and wins below a few hundred bytes. The table is
 * an Int32Array so every value stays a small integer for V8 (a Uint32Array would box the values
 * above 2^31 as doubles).
 */
const T = buildTables();
const NATIVE_THRESHOLD = 384;

/**
 * Z20[j * 256 + v]: the CRC state (byte j = v, other bytes 0) advanced over 20 zero bytes. The
 * advance is linear in the state, so any state's advance is the XOR of its four bytes' entries.
 */
const Z20 = buildZeroAdvance(20);

function buildZeroAdvance(n: number): Int32Array {
  const zeros = new Uint8Array(n);
  const z = new Int32Array(4 * 256);
  for (let j = 0; j < 4; j++) for (let v = 0; v < 256; v++) z[j * 256 + v] = crcLoop(zeros, 0, n, (v << (8 * j)) | 0);
  return z;
}

function buildTables(): Int32Array {
  const t = new Int32Array(16 * 256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c | 0;
  }
  for (let i = 0; i < 256; i++) {
    for (let s = 1; s < 16; s++) t[s * 256 + i] = (t[(s - 1) * 256 + i]! >>> 8) ^ t[t[(s - 1) * 256 + i]! & 0xff]!;
  }
  return t;
}

/** Continues an un-finalised CRC state `c` (int32) over buf[i, end) in JS. */
function crcLoop(buf: Uint8Array, i: number, end: number, c: number): number {
  const t = T;
  while (end - i >= 8) {
    const lo = (buf[i]! | (buf[i + 1]! << 8) | (buf[i + 2]! << 16) | (buf[i + 3]! << 24)) ^ c;
    c =
      t[1792 + (lo & 0xff)]! ^
      t[1536 + ((lo >>> 8) & 0xff)]! ^
      t[1280 + ((lo >>> 16) & 0xff)]! ^
      t[1024 + (lo >>> 24)]! ^
      t[768 + buf[i + 4]!]! ^
      t[512 + buf[i + 5]!]! ^
      t[256 + buf[i + 6]!]! ^
      t[buf[i + 7]!]!;
    i += 8;
  }
  while (i < end) {
    c = t[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
    i++;
  }
  return c;
}

/** CRC-32C of buf[start, end), continuing from `crc` (the result of an earlier call, or 0). */
export function crc32cRange(buf: Buffer, start: number, end: number, crc: number): number {
  if (end - start >= NATIVE_THRESHOLD) return nativeCrc32c(buf.subarray(start, end), crc);
  return ~crcLoop(buf, start, end, ~crc) >>> 0;
}

/**
 * A WAL record's CRC as PostgreSQL computes it: over the record after its 24-byte header, then
 * over the header up to xl_crc (20 bytes). One call, no allocation for small records.
 */
export function walRecordCrc(buf: Buffer, off: number, totLen: number): number {
  let c: number;
  if (totLen - 24 >= NATIVE_THRESHOLD) c = ~nativeCrc32c(buf.subarray(off + 24, off + totLen), 0);
  else c = crcLoop(buf, off + 24, off + totLen, -1);
  return ~crcLoop(buf, off, off + 20, c) >>> 0;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** True where typed arrays are little-endian (word views then read WAL's little-endian fields). */
export const HOST_IS_LITTLE_ENDIAN = LITTLE_ENDIAN;

/**
 * Word view of a buffer for {@link walRecordCrcOk}: an Int32Array over the same memory when
 * the platform is little-endian and the buffer 4-byte aligned, else undefined.
 */
export function wordView(buf: Buffer): Int32Array | undefined {
  if (!LITTLE_ENDIAN || (buf.byteOffset & 3) !== 0) return undefined;
  return new Int32Array(buf.buffer, buf.byteOffset, buf.length >> 2);
}

/**
 * Whether the WAL record at `off` carries the right CRC-32C in its xl_crc: {@link walRecordCrc}
 * reading 4 bytes at a time through `words` (from {@link wordView} of the same buffer), compared
 * with xl_crc here. `off` must be a multiple of 4 (record starts are 8-byte aligned in WAL).
 *
 * It answers a boolean rather than the CRC: a CRC is a small integer for V8 only a quarter of
 * the time, so returning it from a call allocated a heap number per record.
 *
 * Everything is in this one function on purpose: it is called once per record, and a small WAL
 * record (a heap insert is about 60 bytes) costs mostly call overhead and table lookups. Helper
 * calls here were not inlined by V8 once the decoder around it grew (profiled: a third of the
 * CRC time was calls), so the slicing steps are written out for the body and the header.
 */
export function walRecordCrcOk(buf: Buffer, words: Int32Array, off: number, totLen: number): boolean {
  const t = T;
  const end = off + totLen;
  let c = -1;
  let w = (off + 24) >> 2;
  if (totLen - 24 >= NATIVE_THRESHOLD) {
    c = ~nativeCrc32c(buf.subarray(off + 24, end), 0);
  } else {
    // Whole 16-byte steps through the words (slicing-by-16: half the dependent steps of
    // slicing-by-8; measured 3-6% less CRC time on small records), an 8-byte step, then the last 0-7 bytes.
    for (const stop = w + (((totLen - 24) >> 4) << 2); w < stop; w += 4) {
      const a = words[w]! ^ c;
      const b = words[w + 1]!;
      const d = words[w + 2]!;
      const e = words[w + 3]!;
      c =
        t[3840 + (a & 0xff)]! ^
        t[3584 + ((a >>> 8) & 0xff)]! ^
        t[3328 + ((a >>> 16) & 0xff)]! ^
        t[3072 + (a >>> 24)]! ^
        t[2816 + (b & 0xff)]! ^
        t[2560 + ((b >>> 8) & 0xff)]! ^
        t[2304 + ((b >>> 16) & 0xff)]! ^
        t[2048 + (b >>> 24)]! ^
        t[1792 + (d & 0xff)]! ^
        t[1536 + ((d >>> 8) & 0xff)]! ^
        t[1280 + ((d >>> 16) & 0xff)]! ^
        t[1024 + (d >>> 24)]! ^
        t[768 + (e & 0xff)]! ^
        t[512 + ((e >>> 8) & 0xff)]! ^
        t[256 + ((e >>> 16) & 0xff)]! ^
        t[e >>> 24]!;
    }
    if (((totLen - 24) & 8) !== 0) {
      const lo = words[w]! ^ c;
      const hi = words[w + 1]!;
      c =
        t[1792 + (lo & 0xff)]! ^
        t[1536 + ((lo >>> 8) & 0xff)]! ^
        t[1280 + ((lo >>> 16) & 0xff)]! ^
        t[1024 + (lo >>> 24)]! ^
        t[768 + (hi & 0xff)]! ^
        t[512 + ((hi >>> 8) & 0xff)]! ^
        t[256 + ((hi >>> 16) & 0xff)]! ^
        t[hi >>> 24]!;
      w += 2;
    }
    // A 4-byte step when 4-7 bytes are left (half the tails of small records), then the last
    // 0-3 bytes in one step rather than one dependent lookup per byte.
    let i = w << 2;
    if (end - i >= 4) {
      const lo = words[w]! ^ c;
      c = t[768 + (lo & 0xff)]! ^ t[512 + ((lo >>> 8) & 0xff)]! ^ t[256 + ((lo >>> 16) & 0xff)]! ^ t[lo >>> 24]!;
      i += 4;
    }
    const left = end - i;
    if (left === 3) {
      const x = c ^ (buf[i]! | (buf[i + 1]! << 8) | (buf[i + 2]! << 16));
      c = t[512 + (x & 0xff)]! ^ t[256 + ((x >>> 8) & 0xff)]! ^ t[(x >>> 16) & 0xff]! ^ (c >>> 24);
    } else if (left === 2) {
      const x = c ^ (buf[i]! | (buf[i + 1]! << 8));
      c = t[256 + (x & 0xff)]! ^ t[(x >>> 8) & 0xff]! ^ (c >>> 16);
    } else if (left === 1) {
      c = t[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
    }
  }
  // Header bytes [0, 20), hashed from a zero state so that they do not wait for the body's chain
  // (the CPU overlaps the two): by linearity, CRC state after body+header = Z(body state) XOR
  // (header hashed from 0), Z being the state's advance over 20 zero bytes (table Z20).
  w = off >> 2;
  let lo = words[w]!;
  let hi = words[w + 1]!;
  let h =
    t[1792 + (lo & 0xff)]! ^
    t[1536 + ((lo >>> 8) & 0xff)]! ^
    t[1280 + ((lo >>> 16) & 0xff)]! ^
    t[1024 + (lo >>> 24)]! ^
    t[768 + (hi & 0xff)]! ^
    t[512 + ((hi >>> 8) & 0xff)]! ^
    t[256 + ((hi >>> 16) & 0xff)]! ^
    t[hi >>> 24]!;
  lo = words[w + 2]! ^ h;
  hi = words[w + 3]!;
  h =
    t[1792 + (lo & 0xff)]! ^
    t[1536 + ((lo >>> 8) & 0xff)]! ^
    t[1280 + ((lo >>> 16) & 0xff)]! ^
    t[1024 + (lo >>> 24)]! ^
    t[768 + (hi & 0xff)]! ^
    t[512 + ((hi >>> 8) & 0xff)]! ^
    t[256 + ((hi >>> 16) & 0xff)]! ^
    t[hi >>> 24]!;
  lo = words[w + 4]! ^ h;
  h = t[768 + (lo & 0xff)]! ^ t[512 + ((lo >>> 8) & 0xff)]! ^ t[256 + ((lo >>> 16) & 0xff)]! ^ t[lo >>> 24]!;
  const z = Z20;
  c = z[c & 0xff]! ^ z[256 + ((c >>> 8) & 0xff)]! ^ z[512 + ((c >>> 16) & 0xff)]! ^ z[768 + (c >>> 24)]! ^ h;
  // xl_crc is the word after the 20 bytes just hashed.
  return ~c === words[w + 5];
}
