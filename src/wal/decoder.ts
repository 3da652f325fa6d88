// WAL decoder: page headers and records of WAL segments decoded and CRC-checked, record by record.

import { HOST_IS_LITTLE_ENDIAN, walRecordCrcOk, wordView } from './crc32c.js';
import {
  BKPBLOCK_FORK_MASK,
  BKPBLOCK_HAS_DATA,
  BKPBLOCK_HAS_IMAGE,
  BKPBLOCK_SAME_REL,
  BKPIMAGE_HAS_HOLE,
  LONG_PAGE_HEADER_SIZE,
  MAX_RECORD_SIZE,
  RECORD_HEADER_SIZE,
  RM_MAX_BUILTIN_ID,
  RM_MIN_CUSTOM_ID,
  RM_XLOG_ID,
  SHORT_PAGE_HEADER_SIZE,
  WAL_PAGE_SIZE,
  XLOG_SWITCH,
  XLP_ALL_FLAGS,
  XLP_FIRST_IS_CONTRECORD,
  XLP_FIRST_IS_OVERWRITE_CONTRECORD,
  XLP_LONG_HEADER,
  XLR_BLOCK_ID_DATA_LONG,
  XLR_BLOCK_ID_DATA_SHORT,
  XLR_BLOCK_ID_ORIGIN,
  XLR_BLOCK_ID_TOPLEVEL_XID,
  XLR_MAX_BLOCK_ID,
  maxAlign,
  walVersionByMagic,
  type WalVersionInfo,
} from './constants.js';
import { BLOCK_SIZE, isValidWalSegmentSize } from '../postgres/constants.js';
import { WalDecodeError } from './decode-error.js';
import { WalRecord } from './record.js';
import { LAZY_READ_CHUNK } from './file.js';

/** Options of a {@link WalDecoder}. */
export interface WalDecoderOptions {
  /** Called for every record whose CRC verified; the record object is reused. */
  onRecord: (record: WalRecord) => void;
  /** Timeline of the files fed: page headers may carry it or an older one, never a newer one. */
  timeline?: number;
  /**
   * Treat a zero record length or a file that ends early as the end of WAL rather than an
   * error (for `.partial` segments and live pg_wal). Archived segments are complete: default false.
   */
  allowEndOfWal?: boolean;
  /**
   * A reassembly buffer from an earlier decoder (see {@link WalDecoder.reassemblyBuffer}) to use
   * instead of a new one: memory touched for the first time costs a page fault per 4 KiB, and a
   * scan makes a decoder per segment. Only one decoder may use it at a time.
   */
  reassemblyBuffer?: Buffer;
}

/** Why {@link WalDecoder.feedSegment} returned. */
export type FeedStatus =
  /** Every record starting in the segment was decoded; the next record starts in the next segment. */
  | 'complete'
  /** The segment ended with XLOG_SWITCH (the rest of it is padding). */
  | 'switch'
  /** The last record continues in the next segment: feed it to finish that record. */
  | 'needNext'
  /** End of valid WAL (only with allowEndOfWal). */
  | 'endOfWal';

/** Result of feeding one segment. */
export interface FeedResult {
  status: FeedStatus;
  /** LSN of the first record that starts in the segment (its end when none starts in it). */
  firstRecordLsn: number;
  /** Where decoding stopped: the next record's LSN, or the segment end. */
  endLsn: number;
  /** Records decoded (including one finished from the previous segment). */
  records: number;
}

/**
 * Decodes PostgreSQL WAL (13-18) segment by segment. A record that crosses into the next
 * segment is kept (copied) until that segment is fed. Every record's CRC-32C is verified before
 * `onRecord` sees it; anything malformed throws {@link WalDecodeError} naming file and offset.
 */
export class WalDecoder {
  private readonly onRecord: (record: WalRecord) => void;
  private readonly timeline: number | undefined;
  private readonly allowEndOfWal: boolean;
  private readonly rec = new WalRecord();

  /** WAL format, fixed by the first page header seen. */
  version: WalVersionInfo | undefined;
  /** Database system identifier from the first long page header. */
  systemId: bigint | undefined;
  /** Segment size from the first long page header. */
  segmentSize = 0;
  private lastTli = 0;
  private prevRecordLsn = -1;
  /**
   * LSN of the record {@link decodeRecordAt} decodes, handed over in a field: LSNs past 2^30 are
   * not small integers for V8, and as a call argument each would be a heap allocation per record.
   */
  private recLsn = 0;

  /** Reassembly of a record that spans pages. */
  private asm: Buffer;
  private asmHave = 0;
  private asmTotal = 0;
  private asmLsn = 0;
  /** File and offset where the record being reassembled starts, for error messages. */
  private asmFile = '';
  private asmOffset = 0;
  /** Where decoding resumes after an abandoned (overwritten) record. */
  private abandonedAt = 0;
  /** A record is being reassembled and continues in the next segment. */
  private pending = false;
  /** Segment number expected next when {@link pending}. */
  private pendingSegNo = -1;

  private file = '';
  private seg: Buffer = Buffer.alloc(0);
  /**
   * Word views of {@link seg} and {@link asm}: record headers are 8-byte aligned, so their
   * 32-bit fields and the CRC's 8-byte steps are read a word at a time.
   */
  private segWords: Int32Array = new Int32Array(0);
  private asmWords: Int32Array;
  /** Aligned copy of a segment handed over at an odd address (rare: segments are read into fresh buffers). */
  private alignedCopy: Buffer | undefined;
  private segLen = 0;
  private segStart = 0;
  /** seg[0, filled) holds the file's bytes; {@link fill} reads on (a lazily read file), else filled = segLen. */
  private filled = 0;
  private fill: ((upTo: number) => void) | undefined;

  constructor(opts: WalDecoderOptions) {
    // Word reads assume the host's byte order is WAL's (every platform Node runs pgbart on).
    if (!HOST_IS_LITTLE_ENDIAN) throw new Error('the WAL decoder needs a little-endian host');
    this.onRecord = opts.onRecord;
    this.timeline = opts.timeline;
    this.allowEndOfWal = opts.allowEndOfWal === true;
    const reuse = opts.reassemblyBuffer;
    // A reused buffer must be word-aligned and hold a full page; else a fresh one.
    this.asm = reuse && reuse.length >= 64 * 1024 && (reuse.byteOffset & 3) === 0 ? reuse : Buffer.alloc(64 * 1024);
    this.asmWords = wordView(this.asm)!;
  }

  /** The reassembly buffer (grown as records needed), for the next decoder's {@link WalDecoderOptions.reassemblyBuffer}. */
  get reassemblyBuffer(): Buffer {
    return this.asm;
  }

  /** True while a record that started in the last segment fed waits for the next one. */
  get hasPendingRecord(): boolean {
    return this.pending;
  }

  /** LSN of the pending record (valid when {@link hasPendingRecord}). */
  get pendingRecordLsn(): number {
    return this.asmLsn;
  }

  /**
   * How many bytes of the next segment finishing the pending record can need at most (its
   * remaining bytes plus the page headers in between), rounded up to whole pages.
   */
  get pendingBytesNeeded(): number {
    const remaining = this.asmTotal - this.asmHave;
    const pages = Math.ceil((remaining + LONG_PAGE_HEADER_SIZE) / (WAL_PAGE_SIZE - SHORT_PAGE_HEADER_SIZE)) + 1;
    return Math.min(pages * WAL_PAGE_SIZE, this.segmentSize);
  }

  /** Forgets a pending record (e.g. when the next segment will not be read). */
  dropPending(): void {
    this.pending = false;
    this.asmHave = 0;
  }

  private fail(offset: number, reason: string): never {
    throw new WalDecodeError(this.file, offset, reason);
  }

  /**
   * Decodes one segment: buf[0, length) is the file's content, `segNo` its segment number.
   * With `finishPendingOnly`, only the record pending from the previous segment is completed.
   * With `fill`, buf[0, length) is not all read yet: `fill(upTo)` makes buf[0, upTo) valid, and
   * the decoder calls it page by page as it goes (every page passes {@link readPageHeader} before
   * any of its bytes is read), a chunk ahead, so bytes are decoded while still in the CPU cache.
   */
  feedSegment(
    buf: Buffer,
    length: number,
    segNo: number,
    file: string,
    opts: { finishPendingOnly?: boolean; fill?: (upTo: number) => void } = {},
  ): FeedResult {
    this.file = file;
    this.fill = opts.fill;
    this.filled = opts.fill === undefined ? length : 0;
    if ((buf.byteOffset & 3) !== 0) {
      // Word views need 4-byte alignment: decode an aligned copy (records then point into it).
      if (opts.fill !== undefined) opts.fill(length);
      this.filled = length;
      if (!this.alignedCopy || this.alignedCopy.length < length) this.alignedCopy = Buffer.allocUnsafeSlow(length);
      buf.copy(this.alignedCopy, 0, 0, length);
      buf = this.alignedCopy;
    }
    if (buf !== this.seg) this.segWords = wordView(buf)!;
    this.seg = buf;
    this.segLen = length;
    if (length < LONG_PAGE_HEADER_SIZE)
      this.fail(length, `file is truncated: ${length} bytes, shorter than a WAL page header`);
    this.readPageHeader(0, true);
    if (this.segmentSize !== 0 && length > this.segmentSize)
      this.fail(this.segmentSize, `file is longer (${length} bytes) than the WAL segment size ${this.segmentSize}`);
    if (!this.allowEndOfWal && !opts.finishPendingOnly && length < this.segmentSize)
      this.fail(length, `file is truncated: ${length} bytes, expected the WAL segment size ${this.segmentSize}`);
    this.segStart = segNo * this.segmentSize;
    if (!Number.isSafeInteger(this.segStart + this.segmentSize)) this.fail(0, 'segment number too large');
    // The page address check in readPageHeader needs segStart: re-check the first page now.
    this.checkPageAddr(0);
    if (this.pending && this.pendingSegNo !== segNo) {
      this.fail(
        0,
        `expected segment number ${this.pendingSegNo} to finish the record at LSN ${lsnText(this.asmLsn)}, got ${segNo}`,
      );
    }
    let records = 0;
    let pos: number;
    let firstRecordLsn = -1;
    const info = this.seg.readUInt16LE(2);
    if (this.pending) {
      if (info & XLP_FIRST_IS_OVERWRITE_CONTRECORD) {
        // The record was never finished: PostgreSQL abandoned it and wrote new WAL over its tail.
        this.dropPending();
        pos = LONG_PAGE_HEADER_SIZE;
      } else {
        const r = this.continueRecord(0);
        if (r === -2) throw new Error('unreachable: overwrite flag handled above');
        if (r < 0) return this.stopAt('needNext', this.segmentSize, -1, records);
        records++;
        if (this.rec.rmid === RM_XLOG_ID && (this.rec.info & 0xf0) === XLOG_SWITCH)
          return this.stopAt('switch', this.segmentSize, -1, records);
        pos = maxAlign(r);
      }
      if (opts.finishPendingOnly) return this.stopAt('complete', pos, -1, records);
    } else {
      if (opts.finishPendingOnly) return this.stopAt('complete', 0, -1, records);
      pos = LONG_PAGE_HEADER_SIZE;
      if (info & XLP_FIRST_IS_CONTRECORD) {
        // Starting mid-stream: skip the tail of a record that began in an earlier segment.
        const skipEnd = this.skipContinuation(0);
        if (skipEnd < 0) return this.stopAt('complete', this.segmentSize, -1, records);
        pos = maxAlign(skipEnd);
      }
      this.prevRecordLsn = -1;
    }

    const segSize = this.segmentSize;
    for (;;) {
      if (pos >= segSize) return this.stopAt('complete', segSize, firstRecordLsn, records);
      if ((pos & (WAL_PAGE_SIZE - 1)) === 0) {
        if (pos >= this.segLen) return this.endOfFile(pos, firstRecordLsn, records);
        const hdr = this.readPageHeader(pos, false);
        if (this.seg.readUInt16LE(pos + 2) & XLP_FIRST_IS_CONTRECORD) {
          this.fail(
            pos,
            `page at LSN ${lsnText(this.segStart + pos)} continues a record, but a new record was expected there`,
          );
        }
        pos += hdr;
      }
      if (pos + 4 > this.segLen) return this.endOfFile(pos, firstRecordLsn, records);
      const totLen = this.segWords[pos >> 2]! >>> 0;
      if (totLen === 0) {
        if (this.allowEndOfWal) return this.stopAt('endOfWal', pos, firstRecordLsn, records);
        this.fail(
          pos,
          `zero record length at LSN ${lsnText(this.segStart + pos)}: the WAL ends here, but an archived segment must be complete`,
        );
      }
      if (totLen < RECORD_HEADER_SIZE || totLen > MAX_RECORD_SIZE)
        this.fail(pos, `invalid record length ${totLen} at LSN ${lsnText(this.segStart + pos)}`);
      if (firstRecordLsn < 0) firstRecordLsn = this.segStart + pos;
      const pageEnd = (pos & ~(WAL_PAGE_SIZE - 1)) + WAL_PAGE_SIZE;
      let end: number;
      if (pos + totLen <= pageEnd) {
        if (pos + totLen > this.segLen) return this.endOfFile(pos, firstRecordLsn, records);
        this.rec.endLsn = this.segStart + pos + totLen;
        this.recLsn = this.segStart + pos;
        this.decodeRecordAt(this.seg, this.segWords, pos, totLen, pos);
        end = pos + totLen;
      } else {
        // Spans pages: gather it into the reassembly buffer.
        this.asmLsn = this.segStart + pos;
        this.asmTotal = totLen;
        this.asmHave = 0;
        this.asmFile = this.file;
        this.asmOffset = pos;
        this.appendAsm(pos, pageEnd - pos);
        const r = this.continueRecord(pageEnd);
        if (r === -2) {
          pos = this.abandonedAt;
          continue;
        }
        if (r < 0) {
          // Without a pending record the file simply ended (allowEndOfWal): the record is cut.
          if (!this.pending) return { status: 'endOfWal', firstRecordLsn, endLsn: this.asmLsn, records };
          return { status: 'needNext', firstRecordLsn, endLsn: this.asmLsn, records };
        }
        end = r;
      }
      records++;
      if (this.rec.rmid === RM_XLOG_ID && (this.rec.info & 0xf0) === XLOG_SWITCH) {
        return this.stopAt('switch', segSize, firstRecordLsn, records);
      }
      pos = maxAlign(end);
    }
  }

  private endOfFile(pos: number, firstRecordLsn: number, records: number): FeedResult {
    if (this.allowEndOfWal) return this.stopAt('endOfWal', pos, firstRecordLsn, records);
    this.fail(
      this.segLen,
      `file is truncated: ${this.segLen} bytes, expected the WAL segment size ${this.segmentSize}`,
    );
  }

  /**
   * The result of a feedSegment that stops at segment offset `pos`. `firstRecordLsn` is -1 when no
   * record starts in this segment before `pos`: then it is reported as `pos` too, as FeedResult says.
   * Called once per segment, never per record: the decoding loop stays allocation-free.
   */
  private stopAt(status: FeedStatus, pos: number, firstRecordLsn: number, records: number): FeedResult {
    const endLsn = this.segStart + pos;
    return { status, firstRecordLsn: firstRecordLsn < 0 ? endLsn : firstRecordLsn, endLsn, records };
  }

  /** Appends seg[from, from+n) to the reassembly buffer, growing it as bytes actually arrive. */
  private appendAsm(from: number, n: number): void {
    const need = this.asmHave + n;
    if (need > this.asm.length) {
      let size = this.asm.length * 2;
      while (size < need) size *= 2;
      const grown = Buffer.allocUnsafe(Math.min(size, Math.max(need, MAX_RECORD_SIZE)));
      this.asm.copy(grown, 0, 0, this.asmHave);
      this.asm = grown;
      this.asmWords = wordView(grown)!;
    }
    this.seg.copy(this.asm, this.asmHave, from, from + n);
    this.asmHave = need;
  }

  /**
   * Continues the record in the reassembly buffer from the page at `pagePos`. Returns the segment
   * offset just past the record, -1 when the segment ended first (the record stays pending), or
   * -2 when the server abandoned the record (see {@link abandonedAt}).
   */
  private continueRecord(pagePos: number): number {
    let page = pagePos;
    for (;;) {
      if (page >= this.segmentSize) {
        this.pending = true;
        this.pendingSegNo = (this.segStart + this.segmentSize) / this.segmentSize;
        return -1;
      }
      if (page >= this.segLen) {
        if (this.allowEndOfWal) {
          this.pending = false;
          return -1;
        }
        this.fail(
          this.segLen,
          `file is truncated: ${this.segLen} bytes, expected the WAL segment size ${this.segmentSize} (record at LSN ${lsnText(this.asmLsn)} is incomplete)`,
        );
      }
      const hdr = this.readPageHeader(page, page === 0);
      const info = this.seg.readUInt16LE(page + 2);
      if (info & XLP_FIRST_IS_OVERWRITE_CONTRECORD && page !== 0) {
        // The server crashed before finishing the record and wrote new WAL over its tail
        // (XLOG_OVERWRITE_CONTRECORD follows): the record never happened; go on from here.
        this.pending = false;
        this.asmHave = 0;
        this.abandonedAt = page + hdr;
        return -2;
      }
      if (!(info & XLP_FIRST_IS_CONTRECORD)) {
        this.fail(
          page,
          `there is no contrecord flag on the page at LSN ${lsnText(this.segStart + page)}, continuing the record at LSN ${lsnText(this.asmLsn)}`,
        );
      }
      const remLen = this.seg.readUInt32LE(page + 16);
      const remaining = this.asmTotal - this.asmHave;
      if (remLen !== remaining) {
        this.fail(
          page + 16,
          `invalid contrecord length ${remLen} (expected ${remaining}) on the page at LSN ${lsnText(this.segStart + page)}`,
        );
      }
      const start = page + hdr;
      const avail = WAL_PAGE_SIZE - hdr;
      const n = remaining < avail ? remaining : avail;
      if (start + n > this.segLen) {
        if (this.allowEndOfWal) {
          this.pending = false;
          return -1;
        }
        this.fail(
          this.segLen,
          `file is truncated: ${this.segLen} bytes, expected the WAL segment size ${this.segmentSize}`,
        );
      }
      this.appendAsm(start, n);
      if (this.asmHave === this.asmTotal) {
        this.pending = false;
        this.decodeRecord(
          this.asm,
          0,
          this.asmTotal,
          this.asmLsn,
          this.segStart + start + n,
          this.asmFile,
          this.asmOffset,
        );
        return start + n;
      }
      page += WAL_PAGE_SIZE;
    }
  }

  /** Skips a continuation at the start of the segment; returns the offset after it, -1 if it fills the segment. */
  private skipContinuation(pagePos: number): number {
    let page = pagePos;
    let expected = -1;
    for (;;) {
      if (page >= this.segmentSize) return -1;
      if (page >= this.segLen)
        return this.allowEndOfWal
          ? -1
          : this.fail(
              this.segLen,
              `file is truncated: ${this.segLen} bytes, expected the WAL segment size ${this.segmentSize}`,
            );
      const hdr = this.readPageHeader(page, page === 0);
      const info = this.seg.readUInt16LE(page + 2);
      if (!(info & XLP_FIRST_IS_CONTRECORD)) {
        if (expected < 0) return page + hdr;
        this.fail(page, `there is no contrecord flag on the page at LSN ${lsnText(this.segStart + page)}`);
      }
      const remLen = this.seg.readUInt32LE(page + 16);
      if (expected >= 0 && remLen !== expected)
        this.fail(page + 16, `invalid contrecord length ${remLen} (expected ${expected})`);
      const avail = WAL_PAGE_SIZE - hdr;
      if (remLen <= avail) return page + hdr + remLen;
      expected = remLen - avail;
      page += WAL_PAGE_SIZE;
    }
  }

  /** Makes seg[0, upTo) valid (reads on in a lazily read file). */
  private fillTo(upTo: number): void {
    const end = Math.min(upTo, this.segLen);
    if (end <= this.filled) return;
    this.fill!(end);
    this.filled = end;
  }

  /** Validates the page header at segment offset `pos`; returns its size. */
  private readPageHeader(pos: number, first: boolean): number {
    // Every page is entered here before any of its bytes is read: read on a chunk ahead.
    if (pos + WAL_PAGE_SIZE > this.filled && this.fill !== undefined) this.fillTo(pos + LAZY_READ_CHUNK);
    const b = this.seg;
    if (pos + SHORT_PAGE_HEADER_SIZE > this.segLen)
      this.fail(this.segLen, `file is truncated inside the page header at offset ${pos}`);
    const magic = b.readUInt16LE(pos);
    if (this.version === undefined || magic !== this.version.magic) {
      const v = walVersionByMagic(magic);
      if (!v)
        this.fail(
          pos,
          `invalid magic number ${hex4(magic)} in the page header (not WAL of PostgreSQL 13-18, or a zero-filled or corrupted file)`,
        );
      if (this.version !== undefined)
        this.fail(
          pos,
          `magic number ${hex4(magic)} (PostgreSQL ${v.major}) differs from the one seen before (${hex4(this.version.magic)}, PostgreSQL ${this.version.major})`,
        );
      this.version = v;
      this.rec.major = v.major;
    }
    const info = b.readUInt16LE(pos + 2);
    if (info & ~XLP_ALL_FLAGS) this.fail(pos + 2, `invalid info bits ${hex4(info)} in the page header`);
    const tli = b.readUInt32LE(pos + 4);
    if (tli === 0) this.fail(pos + 4, 'timeline 0 in the page header');
    if (this.timeline !== undefined && tli > this.timeline)
      this.fail(pos + 4, `page header has timeline ${tli}, newer than the file's timeline ${this.timeline}`);
    if (tli < this.lastTli)
      this.fail(pos + 4, `out-of-sequence timeline ${tli} (after ${this.lastTli}) in the page header`);
    this.lastTli = tli;
    if (first) {
      if (!(info & XLP_LONG_HEADER)) this.fail(pos + 2, 'the first page of a segment has no long header');
      const sysid = b.readBigUInt64LE(pos + 24);
      const segSize = b.readUInt32LE(pos + 32);
      const blcksz = b.readUInt32LE(pos + 36);
      if (blcksz !== WAL_PAGE_SIZE)
        this.fail(pos + 36, `WAL block size ${blcksz} is not supported (only ${WAL_PAGE_SIZE})`);
      if (!isValidWalSegmentSize(segSize)) this.fail(pos + 32, `invalid WAL segment size ${segSize}`);
      if (this.segmentSize !== 0 && segSize !== this.segmentSize)
        this.fail(pos + 32, `WAL segment size ${segSize} differs from ${this.segmentSize} seen before`);
      if (this.systemId !== undefined && sysid !== this.systemId)
        this.fail(
          pos + 24,
          `system identifier ${sysid} differs from ${this.systemId} seen before (WAL of another cluster)`,
        );
      this.segmentSize = segSize;
      this.systemId = sysid;
      return LONG_PAGE_HEADER_SIZE;
    }
    if (info & XLP_LONG_HEADER) this.fail(pos + 2, 'unexpected long page header in the middle of a segment');
    this.checkPageAddr(pos);
    return SHORT_PAGE_HEADER_SIZE;
  }

  private checkPageAddr(pos: number): void {
    const lo = this.seg.readUInt32LE(pos + 8);
    const hi = this.seg.readUInt32LE(pos + 12);
    const addr = hi * 0x100000000 + lo;
    if (addr !== this.segStart + pos)
      this.fail(
        pos + 8,
        `unexpected page address ${lsnText(addr)} (expected ${lsnText(this.segStart + pos)}): the file's name and content do not match`,
      );
  }

  /** Validates one complete record at buf[off, off+totLen), verifies its CRC, fills {@link rec}, calls back. */
  private decodeRecord(
    buf: Buffer,
    off: number,
    totLen: number,
    lsn: number,
    endLsn: number,
    file: string,
    fileOffset: number,
  ): void {
    this.rec.endLsn = endLsn;
    this.recLsn = lsn;
    if (file === this.file) {
      this.decodeRecordAt(buf, this.asmWords, off, totLen, fileOffset);
      return;
    }
    // A record finished from the next segment: errors name the file where it starts.
    const saved = this.file;
    this.file = file;
    try {
      this.decodeRecordAt(buf, this.asmWords, off, totLen, fileOffset);
    } finally {
      this.file = saved;
    }
  }

  /**
   * `words` is the word view of `buf`; `off` is 8-byte aligned (records start MAXALIGNed), so the
   * header's 32-bit fields are single word reads.
   */
  private decodeRecordAt(buf: Buffer, words: Int32Array, off: number, totLen: number, fileOffset: number): void {
    const lsn = this.recLsn;
    const end = off + totLen;
    const rmid = buf[off + 17]!;
    const version = this.version!;
    if (rmid > RM_MAX_BUILTIN_ID && !(version.hasCustomRmgrs && rmid >= RM_MIN_CUSTOM_ID)) {
      this.fail(fileOffset, `invalid resource manager ID ${rmid} in the record at LSN ${lsnText(lsn)}`);
    }
    const w = off >> 2;
    const prev = (words[w + 3]! >>> 0) * 0x100000000 + (words[w + 2]! >>> 0);
    if (prev !== this.prevRecordLsn && this.prevRecordLsn >= 0) this.failPrevLink(fileOffset, lsn, prev);
    if (!walRecordCrcOk(buf, words, off, totLen)) {
      this.fail(fileOffset, `incorrect resource manager data checksum (CRC-32C) in the record at LSN ${lsnText(lsn)}`);
    }
    const rec = this.rec;
    let p = off + RECORD_HEADER_SIZE;
    let datatotal = 0;
    let maxBlockId = -1;
    let nblocks = 0;
    let mainLen = 0;
    let haveRel = false;
    let spc = 0;
    let db = 0;
    let rel = 0;
    const compressedMask = version.imageCompressedMask;
    while (end - p > datatotal) {
      const id = buf[p++]!;
      if (id === XLR_BLOCK_ID_DATA_SHORT) {
        if (p + 1 > end) this.short(fileOffset, lsn);
        mainLen = buf[p++]!;
        datatotal += mainLen;
        break;
      } else if (id === XLR_BLOCK_ID_DATA_LONG) {
        if (p + 4 > end) this.short(fileOffset, lsn);
        mainLen = u32(buf, p);
        p += 4;
        datatotal += mainLen;
        break;
      } else if (id === XLR_BLOCK_ID_ORIGIN) {
        p += 2;
      } else if (id === XLR_BLOCK_ID_TOPLEVEL_XID && version.hasTopLevelXid) {
        p += 4;
      } else if (id <= XLR_MAX_BLOCK_ID) {
        if (id <= maxBlockId) this.fail(fileOffset, `out-of-order block_id ${id} in the record at LSN ${lsnText(lsn)}`);
        maxBlockId = id;
        if (p + 3 > end) this.short(fileOffset, lsn);
        const flags = buf[p]!;
        const dataLen = buf[p + 1]! | (buf[p + 2]! << 8);
        p += 3;
        if (flags & BKPBLOCK_HAS_DATA) {
          if (dataLen === 0)
            this.fail(fileOffset, `BKPBLOCK_HAS_DATA set, but no data included in the record at LSN ${lsnText(lsn)}`);
        } else if (dataLen !== 0) {
          this.fail(
            fileOffset,
            `BKPBLOCK_HAS_DATA not set, but data length is ${dataLen} in the record at LSN ${lsnText(lsn)}`,
          );
        }
        datatotal += dataLen;
        if (flags & BKPBLOCK_HAS_IMAGE) {
          if (p + 5 > end) this.short(fileOffset, lsn);
          const bimgLen = buf[p]! | (buf[p + 1]! << 8);
          const holeOffset = buf[p + 2]! | (buf[p + 3]! << 8);
          const bimgInfo = buf[p + 4]!;
          p += 5;
          const compressed = (bimgInfo & compressedMask) !== 0;
          const hasHole = (bimgInfo & BKPIMAGE_HAS_HOLE) !== 0;
          let holeLength = 0;
          if (hasHole && compressed) {
            if (p + 2 > end) this.short(fileOffset, lsn);
            holeLength = buf[p]! | (buf[p + 1]! << 8);
            p += 2;
          } else if (hasHole) {
            holeLength = BLOCK_SIZE - bimgLen;
          }
          if (hasHole && (holeOffset === 0 || holeLength === 0 || bimgLen === BLOCK_SIZE))
            this.fail(
              fileOffset,
              `inconsistent full-page image hole (offset ${holeOffset}, length ${holeLength}, image length ${bimgLen}) in the record at LSN ${lsnText(lsn)}`,
            );
          if (!hasHole && holeOffset !== 0)
            this.fail(
              fileOffset,
              `full-page image hole offset ${holeOffset} without BKPIMAGE_HAS_HOLE in the record at LSN ${lsnText(lsn)}`,
            );
          if (compressed && bimgLen === BLOCK_SIZE)
            this.fail(
              fileOffset,
              `compressed full-page image of length ${bimgLen} in the record at LSN ${lsnText(lsn)}`,
            );
          if (!hasHole && !compressed && bimgLen !== BLOCK_SIZE)
            this.fail(
              fileOffset,
              `full-page image length ${bimgLen} without hole or compression in the record at LSN ${lsnText(lsn)}`,
            );
          datatotal += bimgLen;
        }
        if (!(flags & BKPBLOCK_SAME_REL)) {
          if (p + 12 > end) this.short(fileOffset, lsn);
          // Written out rather than calls to u32: this loop runs for every block reference.
          spc = (buf[p]! | (buf[p + 1]! << 8) | (buf[p + 2]! << 16) | (buf[p + 3]! << 24)) >>> 0;
          db = (buf[p + 4]! | (buf[p + 5]! << 8) | (buf[p + 6]! << 16) | (buf[p + 7]! << 24)) >>> 0;
          rel = (buf[p + 8]! | (buf[p + 9]! << 8) | (buf[p + 10]! << 16) | (buf[p + 11]! << 24)) >>> 0;
          p += 12;
          haveRel = true;
        } else if (!haveRel) {
          this.fail(fileOffset, `BKPBLOCK_SAME_REL set but no previous relation in the record at LSN ${lsnText(lsn)}`);
        }
        if (p + 4 > end) this.short(fileOffset, lsn);
        rec.blockId[nblocks] = id;
        rec.spcOid[nblocks] = spc;
        rec.dbOid[nblocks] = db;
        rec.relNumber[nblocks] = rel;
        rec.forkNum[nblocks] = flags & BKPBLOCK_FORK_MASK;
        rec.blockFlags[nblocks] = flags;
        rec.blockNo[nblocks] = buf[p]! | (buf[p + 1]! << 8) | (buf[p + 2]! << 16) | (buf[p + 3]! << 24);
        p += 4;
        nblocks++;
      } else {
        this.fail(fileOffset, `invalid block_id ${id} in the record at LSN ${lsnText(lsn)}`);
      }
    }
    if (end - p !== datatotal)
      this.fail(
        fileOffset,
        `record at LSN ${lsnText(lsn)} has ${end - p} data bytes, its headers announce ${datatotal}`,
      );
    rec.lsn = lsn;
    rec.totalLength = totLen;
    rec.xid = words[w + 1]! >>> 0;
    rec.prevLsn = prev;
    rec.info = buf[off + 16]!;
    rec.rmid = rmid;
    rec.blockCount = nblocks;
    rec.buffer = buf;
    rec.offset = off;
    rec.mainDataOffset = end - mainLen;
    rec.mainDataLength = mainLen;
    this.prevRecordLsn = lsn;
    this.onRecord(rec);
  }

  private failPrevLink(fileOffset: number, lsn: number, prev: number): never {
    this.fail(
      fileOffset,
      `record at LSN ${lsnText(lsn)} has an incorrect prev-link ${lsnText(prev)} (expected ${lsnText(this.prevRecordLsn)})`,
    );
  }

  private short(fileOffset: number, lsn: number): never {
    this.fail(fileOffset, `record at LSN ${lsnText(lsn)} is too short for its block headers`);
  }
}

/** Little-endian uint32 without Buffer's bounds-check call (callers stay within the record). */
function u32(b: Buffer, p: number): number {
  return (b[p]! | (b[p + 1]! << 8) | (b[p + 2]! << 16) | (b[p + 3]! << 24)) >>> 0;
}

function hex4(n: number): string {
  return '0x' + n.toString(16).toUpperCase().padStart(4, '0');
}

/** Formats a numeric LSN as X/Y. */
export function lsnText(lsn: number): string {
  const hi = Math.floor(lsn / 0x100000000);
  const lo = lsn - hi * 0x100000000;
  return `${hi.toString(16).toUpperCase()}/${lo.toString(16).toUpperCase()}`;
}
