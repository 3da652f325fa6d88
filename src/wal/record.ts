// WAL record: one decoded record and its block references, a single instance reused by the decoder.

import { XLR_MAX_BLOCK_ID } from './constants.js';

/**
 * One decoded WAL record. The decoder reuses a single instance for every record (no allocation
 * in the hot loop): read what you need inside the callback and copy it if you keep it.
 *
 * LSNs are plain numbers (exact below 2^53 bytes of WAL, i.e. 8 PB), for speed; use
 * `BigInt(record.lsn)` to get an {@link Lsn}.
 */
export class WalRecord {
  /** Start of the record (its XLogRecord header). */
  lsn = 0;
  /** First byte after the record (not aligned). */
  endLsn = 0;
  /** xl_tot_len. */
  totalLength = 0;
  xid = 0;
  /** xl_prev. */
  prevLsn = 0;
  /** xl_rmid. */
  rmid = 0;
  /** xl_info (rmgr bits in the high nibble). */
  info = 0;
  /** Number of block references; the arrays below are valid for [0, blockCount). */
  blockCount = 0;
  readonly blockId = new Uint8Array(XLR_MAX_BLOCK_ID + 1);
  readonly spcOid = new Uint32Array(XLR_MAX_BLOCK_ID + 1);
  readonly dbOid = new Uint32Array(XLR_MAX_BLOCK_ID + 1);
  readonly relNumber = new Uint32Array(XLR_MAX_BLOCK_ID + 1);
  readonly forkNum = new Uint8Array(XLR_MAX_BLOCK_ID + 1);
  readonly blockNo = new Uint32Array(XLR_MAX_BLOCK_ID + 1);
  /** fork_flags of the reference (BKPBLOCK_HAS_IMAGE, WILL_INIT, ...). */
  readonly blockFlags = new Uint8Array(XLR_MAX_BLOCK_ID + 1);
  /** Buffer holding the whole record contiguously (a segment or the reassembly buffer). */
  buffer: Buffer = Buffer.alloc(0);
  /** Offset of the record header in {@link buffer}. */
  offset = 0;
  /** Main data: buffer[mainDataOffset, mainDataOffset + mainDataLength). */
  mainDataOffset = 0;
  mainDataLength = 0;
  /** WAL format of the stream (major version of the server that wrote it). */
  major = 0;
}
