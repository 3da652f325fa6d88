// MBM format: the binary modified block map file, version 1, encoded, decoded and read.

import { readFile } from 'node:fs/promises';
import { BartError } from '../util/errors.js';
import { crc32cRange } from '../wal/crc32c.js';
import type { RelFileId } from '../wal/relation-events.js';
import type { ForkChanges, MbmEvent, ModifiedBlockMap } from './modified-block-map.js';

/**
 * Binary MBM format, version 1 (all integers little-endian; docs/mbm-format.md has the full
 * description). Header, fork entries with run-length encoded block lists, events, CRC-32C.
 */
export const MBM_MAGIC = 'PGBRTMBM';
export const MBM_FORMAT_VERSION = 1;
const HEADER_SIZE = 72;
/** Smallest relation fork entry (no runs) and smallest event (no payload), to bound the counts. */
const MIN_FORK_ENTRY_SIZE = 24;
const MIN_EVENT_SIZE = 16;
/**
 * Extra block references beyond segmentSize / 4 an MBM may list: the last record of a segment may
 * continue into the next one with its block references (a record has at most 33).
 */
const BLOCK_REFS_SLACK = 64;
const FLAG_SWITCH = 1;

const EVENT_CODES = {
  'relation-drop': 1,
  'database-create': 2,
  'database-drop': 3,
  'tablespace-create': 4,
  'tablespace-drop': 5,
  'wal-level-change': 6,
  'full-page-writes-change': 7,
} as const;
const WAL_LEVELS = ['minimal', 'replica', 'logical'] as const;
const VIA = ['commit', 'abort', 'commit-prepared', 'abort-prepared'] as const;

/** Growable output buffer. */
class Writer {
  buf = Buffer.alloc(4096);
  len = 0;
  private ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const g = Buffer.alloc(size);
    this.buf.copy(g, 0, 0, this.len);
    this.buf = g;
  }
  u8(v: number): void {
    this.ensure(1);
    this.buf[this.len++] = v;
  }
  u16(v: number): void {
    this.ensure(2);
    this.buf.writeUInt16LE(v, this.len);
    this.len += 2;
  }
  u32(v: number): void {
    this.ensure(4);
    this.buf.writeUInt32LE(v >>> 0, this.len);
    this.len += 4;
  }
  u64(v: bigint): void {
    this.ensure(8);
    this.buf.writeBigUInt64LE(v, this.len);
    this.len += 8;
  }
  bytes(b: Buffer): void {
    this.ensure(b.length);
    b.copy(this.buf, this.len);
    this.len += b.length;
  }
}

/** Turns ascending block numbers into (first, count) runs. */
function runs(blocks: Uint32Array): number[] {
  const out: number[] = [];
  let i = 0;
  while (i < blocks.length) {
    const first = blocks[i]!;
    let n = 1;
    while (i + n < blocks.length && blocks[i + n] === first + n) n++;
    out.push(first, n);
    i += n;
  }
  return out;
}

function eventPayload(e: MbmEvent): Writer {
  const w = new Writer();
  const rel = (r: RelFileId) => {
    w.u32(r.spcOid);
    w.u32(r.dbOid);
    w.u32(r.relNumber);
  };
  switch (e.kind) {
    case 'relation-drop':
      w.u32(VIA.indexOf(e.via));
      w.u32(e.rels.length);
      e.rels.forEach(rel);
      break;
    case 'database-create':
      w.u32(e.dbOid);
      w.u32(e.spcOid);
      w.u32(e.strategy === 'file_copy' ? 0 : 1);
      w.u32(e.srcDbOid ?? 0);
      w.u32(e.srcSpcOid ?? 0);
      break;
    case 'database-drop':
      w.u32(e.dbOid);
      w.u32(e.spcOids.length);
      e.spcOids.forEach((s) => w.u32(s));
      break;
    case 'tablespace-create':
      w.u32(e.spcOid);
      w.bytes(Buffer.from(e.path, 'utf8'));
      break;
    case 'tablespace-drop':
      w.u32(e.spcOid);
      break;
    case 'wal-level-change':
      w.u32(WAL_LEVELS.indexOf(e.walLevel));
      break;
    case 'full-page-writes-change':
      w.u32(e.on ? 1 : 0);
      break;
  }
  return w;
}

/** Serialises an MBM (format version 1). */
export function encodeMbm(m: ModifiedBlockMap): Buffer {
  const w = new Writer();
  w.bytes(Buffer.from(MBM_MAGIC, 'ascii'));
  w.u16(MBM_FORMAT_VERSION);
  w.u16(HEADER_SIZE);
  w.u32(m.endedWithSwitch ? FLAG_SWITCH : 0);
  w.u32(m.timeline);
  w.u32(m.segmentSize);
  w.u64(m.startLsn);
  w.u64(m.endLsn);
  w.u64(m.systemId);
  w.u32(m.walMagic);
  w.u32(m.records);
  w.u32(m.relations.length);
  w.u32(m.events.length);
  const totalLengthAt = w.len;
  w.u32(0);
  w.u32(0);
  for (const r of m.relations) {
    w.u32(r.spcOid);
    w.u32(r.dbOid);
    w.u32(r.relNumber);
    w.u8(r.fork);
    w.u8(r.limit === null ? 0 : 1);
    w.u16(0);
    w.u32(r.limit ?? 0);
    const rs = runs(r.blocks);
    w.u32(rs.length / 2);
    for (const v of rs) w.u32(v);
  }
  for (const e of m.events) {
    const p = eventPayload(e);
    w.u8(EVENT_CODES[e.kind]);
    w.u8(0);
    w.u16(0);
    w.u32(p.len);
    w.u64(BigInt(e.lsn));
    w.bytes(p.buf.subarray(0, p.len));
  }
  w.buf.writeUInt32LE(w.len + 4, totalLengthAt);
  const crc = crc32cRange(w.buf, 0, w.len, 0);
  w.u32(crc);
  return Buffer.from(w.buf.subarray(0, w.len));
}

/** Parses an MBM; throws BartError naming `label` and the offset on any inconsistency. */
export function decodeMbm(buf: Buffer, label: string): ModifiedBlockMap {
  const bad = (off: number, why: string): never => {
    throw new BartError(`invalid MBM file "${label}" at byte offset ${off}: ${why}`);
  };
  if (buf.length < HEADER_SIZE + 4) bad(buf.length, 'file too short');
  if (buf.toString('ascii', 0, 8) !== MBM_MAGIC) bad(0, 'bad magic (not an MBM file)');
  const version = buf.readUInt16LE(8);
  if (version !== MBM_FORMAT_VERSION)
    bad(8, `unsupported format version ${version} (this pgbart reads version ${MBM_FORMAT_VERSION})`);
  const total = buf.readUInt32LE(64);
  if (total !== buf.length) bad(64, `recorded length ${total} differs from the file size ${buf.length}`);
  const crc = crc32cRange(buf, 0, buf.length - 4, 0);
  if (crc !== buf.readUInt32LE(buf.length - 4)) bad(buf.length - 4, 'checksum mismatch (file corrupted)');
  const headerSize = buf.readUInt16LE(10);
  const end = buf.length - 4;
  if (headerSize < HEADER_SIZE || headerSize > end) bad(10, `header size ${headerSize} is out of range`);
  const segmentSize = buf.readUInt32LE(20);
  if (segmentSize < 1 << 20 || segmentSize > 1 << 30 || (segmentSize & (segmentSize - 1)) !== 0) {
    bad(20, `WAL segment size ${segmentSize} is not a power of two from 1 MB to 1 GB`);
  }
  let p = headerSize;
  const need = (n: number) => {
    if (p + n > end) bad(p, 'truncated entry');
  };
  const u32 = () => {
    need(4);
    const v = buf.readUInt32LE(p);
    p += 4;
    return v;
  };
  const nrel = buf.readUInt32LE(56);
  const nev = buf.readUInt32LE(60);
  // Counts are checked against the bytes that could hold them before anything is allocated.
  if (nrel * MIN_FORK_ENTRY_SIZE + nev * MIN_EVENT_SIZE > end - p) {
    bad(56, `${nrel} relation fork entries and ${nev} events cannot fit in the ${end - p} bytes after the header`);
  }
  // Runs compress blocks, so the file size does not bound them; the WAL does: every block
  // reference carries a 4-byte block number, so one segment references at most segmentSize / 4.
  let blockBudget = segmentSize / 4 + BLOCK_REFS_SLACK;
  const relations: ForkChanges[] = [];
  for (let i = 0; i < nrel; i++) {
    const spcOid = u32(),
      dbOid = u32(),
      relNumber = u32();
    need(4);
    const fork = buf[p]!;
    const hasLimit = buf[p + 1]!;
    p += 4;
    const limit = u32();
    const nruns = u32();
    need(8 * nruns);
    let count = 0;
    for (let k = 0; k < nruns; k++) {
      const first = buf.readUInt32LE(p + 8 * k);
      const n = buf.readUInt32LE(p + 8 * k + 4);
      if (first + n > 0x100000000) bad(p + 8 * k, `block run ${first}+${n} goes past the last block number`);
      count += n;
      if (count > blockBudget) {
        bad(p + 8 * k + 4, `more modified blocks than a WAL segment of ${segmentSize} bytes can reference`);
      }
    }
    blockBudget -= count;
    const blocks = new Uint32Array(count);
    let j = 0;
    for (let k = 0; k < nruns; k++) {
      const first = u32(),
        n = u32();
      for (let b = 0; b < n; b++) blocks[j++] = first + b;
    }
    relations.push({ spcOid, dbOid, relNumber, fork, limit: hasLimit ? limit : null, blocks });
  }
  const events: MbmEvent[] = [];
  for (let i = 0; i < nev; i++) {
    need(16);
    const code = buf[p]!;
    const plen = buf.readUInt32LE(p + 4);
    const lsn = Number(buf.readBigUInt64LE(p + 8));
    p += 16;
    need(plen);
    const stop = p + plen;
    switch (code) {
      case 1: {
        const via = VIA[u32()] ?? 'commit';
        const n = u32();
        const rels: RelFileId[] = [];
        for (let k = 0; k < n; k++) rels.push({ spcOid: u32(), dbOid: u32(), relNumber: u32() });
        events.push({ kind: 'relation-drop', lsn, rels, via });
        break;
      }
      case 2: {
        const dbOid = u32(),
          spcOid = u32(),
          strategy = u32() === 0 ? 'file_copy' : 'wal_log',
          srcDbOid = u32(),
          srcSpcOid = u32();
        events.push(
          strategy === 'file_copy'
            ? { kind: 'database-create', lsn, dbOid, spcOid, strategy, srcDbOid, srcSpcOid }
            : { kind: 'database-create', lsn, dbOid, spcOid, strategy },
        );
        break;
      }
      case 3: {
        const dbOid = u32();
        const n = u32();
        const spcOids: number[] = [];
        for (let k = 0; k < n; k++) spcOids.push(u32());
        events.push({ kind: 'database-drop', lsn, dbOid, spcOids });
        break;
      }
      case 4: {
        const spcOid = u32();
        events.push({ kind: 'tablespace-create', lsn, spcOid, path: buf.toString('utf8', p, stop) });
        break;
      }
      case 5:
        events.push({ kind: 'tablespace-drop', lsn, spcOid: u32() });
        break;
      case 6: {
        const walLevel = WAL_LEVELS[u32()];
        if (walLevel === undefined) bad(p - 4, 'unknown wal_level');
        events.push({ kind: 'wal-level-change', lsn, walLevel });
        break;
      }
      case 7:
        events.push({ kind: 'full-page-writes-change', lsn, on: u32() !== 0 });
        break;
      default:
        bad(p - 16, `unknown event code ${code}`);
    }
    if (p > stop) bad(p, 'event payload overrun');
    p = stop;
  }
  if (p !== end) bad(p, `${end - p} unexpected bytes after the last entry`);
  return {
    timeline: buf.readUInt32LE(16),
    segmentSize,
    startLsn: buf.readBigUInt64LE(24),
    endLsn: buf.readBigUInt64LE(32),
    systemId: buf.readBigUInt64LE(40),
    walMagic: buf.readUInt32LE(48),
    records: buf.readUInt32LE(52),
    endedWithSwitch: (buf.readUInt32LE(12) & FLAG_SWITCH) !== 0,
    relations,
    events,
  };
}

/** Reads and parses an MBM file. */
export async function readMbmFile(path: string): Promise<ModifiedBlockMap> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (err) {
    throw new BartError(`cannot read MBM file "${path}": ${(err as Error).message}`);
  }
  return decodeMbm(buf, path);
}
