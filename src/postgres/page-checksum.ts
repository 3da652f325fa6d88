// PostgreSQL page checksums: the data page checksum algorithm and a streaming verifier of relation files.

import type { DataHost } from '../hosts/data-host.js';
import { BLOCK_SIZE } from './constants.js';

/**
 * PostgreSQL's data page checksum (the algorithm of src/include/storage/checksum_impl.h, written
 * anew here) and a streaming verifier that checks the pages of a relation file as it is read.
 *
 * The checksum treats an 8 KiB page as 64 rows of 32 little-endian 32-bit words and runs one
 * FNV-1a-like hash per column (lane): `tmp = sum ^ word; sum = tmp * FNV_PRIME ^ (tmp >> 17)`,
 * each lane seeded with its own base offset, then two rounds of zeros, then the lanes xor-folded,
 * xored with the block number and reduced to 16 bits. pd_checksum (offset 8) counts as zero.
 * Words are read in the machine's byte order, as PostgreSQL does: data files are native-endian, and
 * every platform Node runs pgbart on is little-endian.
 */

/** BLCKSZ: PostgreSQL's page size (every supported build). */
export const PAGE_SIZE = BLOCK_SIZE;
const PAGE_WORDS = PAGE_SIZE / 4;
/** Parallel hash lanes (a fixed part of the algorithm: another count gives other checksums). */
const N_SUMS = 32;
const FNV_PRIME = 16777619;

/** The lanes' initial values (checksumBaseOffsets in checksum_impl.h). */
const BASE_OFFSETS = Int32Array.of(
  0x5b1f36e9,
  0xb8525960,
  0x02ab50aa,
  0x1de66d2a,
  0x79ff467a,
  0x9bb9f8a3,
  0x217e7cd2,
  0x83e13d2c,
  0xf8d4474f,
  0xe39eb970,
  0x42c6ae16,
  0x993216fa,
  0x7b093b5d,
  0x98daff3c,
  0xf718902a,
  0x0b1c9cdb,
  0xe58f764b,
  0x187636bc,
  0x5d7b3bb1,
  0xe73de7de,
  0x92bec979,
  0xcca6c0b2,
  0x304a0979,
  0x85aa43d4,
  0x783125bb,
  0x6ca8eaa2,
  0xe407eac6,
  0x4b5cfc3e,
  0x9fbf8c76,
  0x15ca20be,
  0xf2ca9fd3,
  0x959bd756,
);

/** One hash step of a lane. */
const step = (sum: number, word: number): number => {
  const tmp = sum ^ word;
  return Math.imul(tmp, FNV_PRIME) ^ (tmp >>> 17);
};

/**
 * The checksum PostgreSQL would store in a page: `words` viewed from `wordOffset` holds the page's
 * 2048 words; `blockNumber` is the block's number within its relation fork (segment * RELSEG_SIZE +
 * block within the segment file). Allocates nothing.
 */
export function pageChecksum(words: Int32Array, wordOffset: number, blockNumber: number): number {
  // Four lanes at a time, each in a local variable, front to back down the page: measured ~5x
  // faster in V8 than 32 sums kept in an array (loads and stores every step) and than one lane at a
  // time (one long chain of dependent multiplies). Int32Array, not Uint32Array: words above 2^31
  // would otherwise leave the int32 fast path.
  let folded = 0;
  const end = wordOffset + PAGE_WORDS;
  for (let lane = 0; lane < N_SUMS; lane += 4) {
    let at = wordOffset + lane;
    // The first row's word 2 carries pd_checksum in its low 16 bits, which count as zero.
    const mask2 = lane === 0 ? 0xffff0000 | 0 : -1;
    let a = step(BASE_OFFSETS[lane]!, words[at]!);
    let b = step(BASE_OFFSETS[lane + 1]!, words[at + 1]!);
    let c = step(BASE_OFFSETS[lane + 2]!, words[at + 2]! & mask2);
    let d = step(BASE_OFFSETS[lane + 3]!, words[at + 3]!);
    for (at += N_SUMS; at < end; at += N_SUMS) {
      let t = a ^ words[at]!;
      a = Math.imul(t, FNV_PRIME) ^ (t >>> 17);
      t = b ^ words[at + 1]!;
      b = Math.imul(t, FNV_PRIME) ^ (t >>> 17);
      t = c ^ words[at + 2]!;
      c = Math.imul(t, FNV_PRIME) ^ (t >>> 17);
      t = d ^ words[at + 3]!;
      d = Math.imul(t, FNV_PRIME) ^ (t >>> 17);
    }
    // Two rounds of zeros mix each lane's last word's high bits down.
    folded ^= step(step(a, 0), 0) ^ step(step(b, 0), 0) ^ step(step(c, 0), 0) ^ step(step(d, 0), 0);
  }
  return (((folded ^ blockNumber) >>> 0) % 65535) + 1;
}

/**
 * The same checksum as WebAssembly SIMD code: 32 lanes as eight 4-lane vectors, so one multiply
 * does four lanes' step. About twice the speed of {@link pageChecksum} in V8 (8 KiB pages copied in
 * first included); built here byte by byte, since the project has no WebAssembly toolchain.
 * Exports `sum(p)`: the xor-folded lanes of the page at byte `p` of `mem` (pd_checksum zeroed by the
 * caller), before the block number is mixed in; `mem` is 17 x 64 KiB: room for 128 pages at 0.
 */
function buildWasmKernel(): Uint8Array<ArrayBuffer> {
  const leb = (n: number): number[] => {
    const out: number[] = [];
    do {
      let b = n & 0x7f;
      n >>>= 7;
      if (n !== 0) b |= 0x80;
      out.push(b);
    } while (n !== 0);
    return out;
  };
  const simd = (op: number, ...rest: number[]) => [0xfd, ...leb(op), ...rest];
  const v128Const = (words: ArrayLike<number>) => {
    const b: number[] = [];
    for (let i = 0; i < 4; i++) {
      const w = words[i]!;
      b.push(w & 0xff, (w >>> 8) & 0xff, (w >>> 16) & 0xff, w >>> 24);
    }
    return simd(12, ...b);
  };
  const get = (i: number) => [0x20, i];
  const set = (i: number) => [0x21, i];
  // Locals: 0 = p (param), 1-8 = lane vectors, 9 = tmp, 10 = FNV prime vector, 11 = end of page.
  const [P, T, PRIME, END] = [0, 9, 10, 11];
  const XOR = simd(81);
  const MUL = simd(181);
  const SHR_U = simd(173);
  const I32_CONST_17 = [0x41, 17];
  // lane = tmp * FNV_PRIME ^ (tmp >>> 17)
  const mix = (lane: number) => [
    ...[...get(T), ...get(PRIME), ...MUL],
    ...[...get(T), ...I32_CONST_17, ...SHR_U],
    ...[...XOR, ...set(lane)],
  ];
  const body: number[] = [];
  for (let k = 0; k < 8; k++) body.push(...v128Const(BASE_OFFSETS.subarray(4 * k, 4 * k + 4)), ...set(1 + k));
  body.push(...v128Const([FNV_PRIME, FNV_PRIME, FNV_PRIME, FNV_PRIME]), ...set(PRIME));
  body.push(...get(P), 0x41, 0x80, 0xc0, 0x00, 0x6a, ...set(END)); // end = p + 8192
  body.push(0x03, 0x40); // loop over the page's 64 rows of 32 words
  for (let k = 0; k < 8; k++) {
    // tmp = lane ^ v128.load(p + 16k); then mix
    body.push(...get(1 + k), ...get(P), ...simd(0, 4, ...leb(16 * k)), ...XOR, ...set(T), ...mix(1 + k));
  }
  // p += 128; loop while p < end
  body.push(...get(P), 0x41, 0x80, 0x01, 0x6a, 0x22, P, ...get(END), 0x49, 0x0d, 0, 0x0b);
  for (let round = 0; round < 2; round++) {
    for (let k = 0; k < 8; k++) body.push(...get(1 + k), ...set(T), ...mix(1 + k));
  }
  body.push(...get(1));
  for (let k = 1; k < 8; k++) body.push(...get(1 + k), ...XOR);
  body.push(...set(T));
  // xor of the four 32-bit lanes of tmp
  body.push(...get(T), ...simd(27, 0), ...get(T), ...simd(27, 1), 0x73);
  body.push(...get(T), ...simd(27, 2), 0x73, ...get(T), ...simd(27, 3), 0x73);
  body.push(0x0b);
  const fn = [2, 10, 0x7b, 1, 0x7f, ...body]; // locals: 10 x v128, 1 x i32
  const section = (id: number, content: number[]) => [id, ...leb(content.length), ...content];
  const name = (n: string) => [n.length, ...Buffer.from(n)];
  return Uint8Array.from([
    0x00,
    0x61,
    0x73,
    0x6d,
    1,
    0,
    0,
    0,
    ...section(1, [1, 0x60, 1, 0x7f, 1, 0x7f]), // type: (i32) -> i32
    ...section(3, [1, 0]),
    ...section(5, [1, 0, 17]), // memory: 17 pages of 64 KiB
    ...section(7, [2, ...name('sum'), 0, 0, ...name('mem'), 2, 0]),
    ...section(10, [1, ...leb(fn.length), ...fn]),
  ]);
}

/** Pages the kernel's memory holds at once. */
const STAGED_PAGES = 128;

/** The WebAssembly kernel of this thread, or undefined where WebAssembly SIMD is missing (then JS). */
const kernel = ((): { sum: (p: number) => number; mem: Uint8Array } | undefined => {
  try {
    const instance = new WebAssembly.Instance(new WebAssembly.Module(buildWasmKernel()));
    const exports = instance.exports as { sum: (p: number) => number; mem: WebAssembly.Memory };
    return { sum: exports.sum, mem: new Uint8Array(exports.mem.buffer) };
  } catch {
    return undefined;
  }
})();

/** Scratch page for the JS fallback (4-byte aligned, as Int32Array wants). */
const fallbackPage = new Int32Array(PAGE_WORDS);
const fallbackBytes = new Uint8Array(fallbackPage.buffer);

/** The checksum PostgreSQL would store in the page at `offset` of `bytes` (any alignment). */
export function checksumPage(bytes: Uint8Array, offset: number, blockNumber: number): number {
  if (kernel) {
    kernel.mem.set(bytes.subarray(offset, offset + PAGE_SIZE), 0);
    return stagedChecksum(0, blockNumber);
  }
  fallbackBytes.set(bytes.subarray(offset, offset + PAGE_SIZE));
  return pageChecksum(fallbackPage, 0, blockNumber);
}

/** The checksum of the page staged at byte `at` of the kernel's memory (its pd_checksum is zeroed). */
function stagedChecksum(at: number, blockNumber: number): number {
  const { mem, sum } = kernel!;
  mem[at + 8] = 0;
  mem[at + 9] = 0;
  return (((sum(at) ^ blockNumber) >>> 0) % 65535) + 1;
}

/**
 * Checks one page as PostgreSQL's base backup does: new pages (pd_upper = 0, PageIsNew) and pages
 * whose LSN is at or past the backup's start LSN (`startHi`/`startLo`: its high and low 32 bits)
 * are not checked (`skipped`: WAL replay rewrites them); the others must carry the right checksum
 * (`ok`, else `bad`). With `staged`, the page is at byte `offset` of the kernel's memory already.
 */
function checkPage(
  bytes: Uint8Array,
  offset: number,
  blockNumber: number,
  startHi: number,
  startLo: number,
  staged: boolean,
): PageVerdict {
  if ((bytes[offset + 14]! | (bytes[offset + 15]! << 8)) === 0) return 'skipped';
  // pd_lsn is {xlogid, xrecoff}: two native-endian (little-endian) 32-bit words, high half first.
  const hi = u32(bytes, offset);
  const lo = u32(bytes, offset + 4);
  if (hi > startHi || (hi === startHi && lo >= startLo)) return 'skipped';
  const stored = bytes[offset + 8]! | (bytes[offset + 9]! << 8);
  const computed = staged ? stagedChecksum(offset, blockNumber) : checksumPage(bytes, offset, blockNumber);
  return computed === stored ? 'ok' : 'bad';
}

/** The little-endian 32-bit word at byte `at` of `bytes`. */
function u32(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

/** The outcome of checking one page. */
export type PageVerdict = 'ok' | 'skipped' | 'bad';

/** The backup's start LSN split in its high and low 32 bits. */
function splitLsn(lsn: bigint): { startHi: number; startLo: number } {
  return { startHi: Number(lsn >> 32n), startLo: Number(lsn & 0xffffffffn) };
}

/**
 * Checks the pages of one relation file read front to back in pieces of any size (as the backup
 * writers read them): whole pages are copied into the kernel's memory up to 128 at a time, a page
 * that straddles two pieces is put together first. Collects the blocks (numbers within the file)
 * that failed, for the caller to re-read once: a page read while PostgreSQL wrote it can look torn.
 */
export class PageVerifier {
  /** Blocks of this file (0-based within the file) whose checksum did not match. */
  readonly suspects: number[] = [];
  /** Pages checked (not skipped). */
  checked = 0;
  private readonly carry = new Uint8Array(PAGE_SIZE);
  private carryBytes = 0;
  private block = 0;
  private readonly startHi: number;
  private readonly startLo: number;

  /**
   * @param firstBlock the relation block number of the file's first page (segment * RELSEG_SIZE)
   * @param startLsn the backup's start LSN
   */
  constructor(
    private readonly firstBlock: number,
    startLsn: bigint,
  ) {
    ({ startHi: this.startHi, startLo: this.startLo } = splitLsn(startLsn));
  }

  /** Feeds the next bytes of the file. A trailing partial page (the file is being extended) is ignored. */
  update(piece: Uint8Array): void {
    let at = 0;
    if (this.carryBytes > 0) {
      const take = Math.min(PAGE_SIZE - this.carryBytes, piece.length);
      this.carry.set(piece.subarray(0, take), this.carryBytes);
      this.carryBytes += take;
      at = take;
      if (this.carryBytes < PAGE_SIZE) return;
      this.checkBlock(this.block++, this.carry, 0);
      this.carryBytes = 0;
    }
    while (piece.length - at >= PAGE_SIZE) {
      const pages = Math.min(STAGED_PAGES, Math.floor((piece.length - at) / PAGE_SIZE));
      if (kernel) {
        kernel.mem.set(piece.subarray(at, at + pages * PAGE_SIZE), 0);
        for (let i = 0; i < pages; i++) this.judge(this.block++, kernel.mem, i * PAGE_SIZE, true);
      } else {
        for (let i = 0; i < pages; i++) this.judge(this.block++, piece, at + i * PAGE_SIZE, false);
      }
      at += pages * PAGE_SIZE;
    }
    if (at < piece.length) {
      this.carry.set(piece.subarray(at), 0);
      this.carryBytes = piece.length - at;
    }
  }

  /**
   * Checks block `block` of the file (its number within the file), at `offset` of `bytes`, for
   * callers that read blocks out of order: the incremental backup reads only changed blocks.
   */
  checkBlock(block: number, bytes: Uint8Array, offset: number): void {
    this.judge(block, bytes, offset, false);
  }

  private judge(block: number, bytes: Uint8Array, offset: number, staged: boolean): void {
    const verdict = checkPage(bytes, offset, this.firstBlock + block, this.startHi, this.startLo, staged);
    if (verdict !== 'skipped') this.checked++;
    if (verdict === 'bad') this.suspects.push(block);
  }

  /**
   * Checks a page read again (block `block` of the file, `page` holding exactly its bytes): true
   * when it now passes (or is skipped: it changed since the backup started).
   */
  recheck(block: number, page: Uint8Array): boolean {
    return checkPage(page, 0, this.firstBlock + block, this.startHi, this.startLo, false) !== 'bad';
  }
}

/**
 * An LSN bound past every real LSN: with it no page counts as changed since a start, so every page
 * (but new, all-zero ones, which carry no checksum) is checked. For a stopped, consistent cluster.
 */
export const CHECK_EVERY_PAGE = 1n << 64n;

/** Bytes read at a time when a whole file is checked: few reads, and memory bounded whatever the file. */
const FILE_READ_SIZE = 1 << 20;

/** What checking the pages of one file found. */
export interface FilePageCheck {
  /** Pages checked (not skipped). */
  checked: number;
  /** Blocks of the file (0-based within it) that failed, also when read a second time; ascending. */
  bad: number[];
}

/**
 * Reads once more the blocks `verifier` found bad in `path` on `host` and returns those that still
 * fail: a page read while PostgreSQL wrote it can look torn, and read again it is whole (its LSN
 * then says it changed since the start). A block the file no longer has (dropped or truncated
 * meanwhile) is not returned: nothing of it is restored but what WAL replays.
 */
export async function rereadSuspects(host: DataHost, path: string, verifier: PageVerifier): Promise<number[]> {
  if (verifier.suspects.length === 0) return [];
  const still: number[] = [];
  const file = await host.open(path, { random: true });
  const page = Buffer.alloc(PAGE_SIZE);
  try {
    for (const block of verifier.suspects) {
      let got = 0;
      while (file && got < PAGE_SIZE) {
        const n = await file.read(page, got, PAGE_SIZE - got, block * PAGE_SIZE + got);
        if (n === 0) break;
        got += n;
      }
      if (got < PAGE_SIZE) continue;
      if (!verifier.recheck(block, page)) still.push(block);
    }
  } finally {
    await file?.close();
  }
  return still;
}

/**
 * Checks every page of the relation file `path` on `host`, read front to back in 1 MiB pieces (never
 * the whole file at once), failing pages read a second time; undefined when the file is gone.
 * `firstBlock` is the relation block number of its first page (segment * RELSEG_SIZE); pages whose
 * LSN is at or past `startLsn` are not checked ({@link CHECK_EVERY_PAGE} checks them all).
 */
export async function checkFilePages(
  host: DataHost,
  path: string,
  firstBlock: number,
  startLsn: bigint,
  signal?: AbortSignal,
): Promise<FilePageCheck | undefined> {
  const file = await host.open(path);
  if (!file) return undefined;
  const verifier = new PageVerifier(firstBlock, startLsn);
  try {
    const buf = Buffer.allocUnsafe(FILE_READ_SIZE);
    for (let position = 0; ;) {
      signal?.throwIfAborted();
      const n = await file.read(buf, 0, buf.length, position);
      if (n === 0) break;
      verifier.update(buf.subarray(0, n));
      position += n;
    }
  } finally {
    await file.close();
  }
  const bad = await rereadSuspects(host, path, verifier);
  return { checked: verifier.checked, bad: bad.sort((a, b) => a - b) };
}

/**
 * `block 7` or `blocks 1, 4, 9 and 12 more`: failing blocks (ascending) as messages list them, at
 * most `max` of them by number.
 */
export function describeBlocks(blocks: readonly number[], max: number): string {
  const listed = blocks.slice(0, max);
  const more = blocks.length > listed.length ? ` and ${blocks.length - listed.length} more` : '';
  return `${blocks.length === 1 ? 'block' : 'blocks'} ${listed.join(', ')}${more}`;
}
