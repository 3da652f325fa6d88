// WAL events: records that create, truncate or drop relations, databases and tablespaces as a whole.

import { RM_DBASE_ID, RM_SMGR_ID, RM_TBLSPC_ID, RM_XACT_ID, RM_XLOG_ID } from './constants.js';
import type { WalRecord } from './record.js';

/** A relation file identity: tablespace, database and relfilenode (RelFileNode / RelFileLocator). */
export interface RelFileId {
  spcOid: number;
  dbOid: number;
  relNumber: number;
}

/** A WAL record that changes a relation, database or tablespace as a whole (not block by block). */
export type WalEvent =
  /** XLOG_SMGR_CREATE: a fork file was created (everything in it is new). */
  | { kind: 'relation-create'; lsn: number; rel: RelFileId; fork: number }
  /**
   * XLOG_SMGR_TRUNCATE: the relation was cut to `blocks` heap blocks; `forks` lists the fork
   * numbers truncated (main, fsm, vm as flagged in the record).
   */
  | { kind: 'relation-truncate'; lsn: number; rel: RelFileId; blocks: number; forks: number[] }
  /** Relations dropped at commit or abort (also COMMIT/ROLLBACK PREPARED). */
  | {
      kind: 'relation-drop';
      lsn: number;
      rels: RelFileId[];
      via: 'commit' | 'abort' | 'commit-prepared' | 'abort-prepared';
    }
  /** CREATE DATABASE; with file_copy the new directory's files carry no block references. */
  | {
      kind: 'database-create';
      lsn: number;
      dbOid: number;
      spcOid: number;
      strategy: 'file_copy' | 'wal_log';
      srcDbOid?: number;
      srcSpcOid?: number;
    }
  /** DROP DATABASE (its directory in each listed tablespace). */
  | { kind: 'database-drop'; lsn: number; dbOid: number; spcOids: number[] }
  | { kind: 'tablespace-create'; lsn: number; spcOid: number; path: string }
  | { kind: 'tablespace-drop'; lsn: number; spcOid: number }
  /**
   * XLOG_PARAMETER_CHANGE (written at startup when settings recorded in pg_control changed):
   * with wal_level = minimal, bulk operations leave no block references, so no incremental
   * backup may span it.
   */
  | { kind: 'wal-level-change'; lsn: number; walLevel: 'minimal' | 'replica' | 'logical' }
  /** XLOG_FPW_CHANGE: full_page_writes turned on or off (off risks torn pages in backups). */
  | { kind: 'full-page-writes-change'; lsn: number; on: boolean };

/** The kinds of {@link WalEvent}. */
export type WalEventKind = WalEvent['kind'];

const XLOG_SMGR_CREATE = 0x10;
const XLOG_SMGR_TRUNCATE = 0x20;
const SMGR_TRUNCATE_HEAP = 0x0001;
const SMGR_TRUNCATE_VM = 0x0002;
const SMGR_TRUNCATE_FSM = 0x0004;

const XLOG_XACT_OPMASK = 0x70;
const XLOG_XACT_COMMIT = 0x00;
const XLOG_XACT_ABORT = 0x20;
const XLOG_XACT_COMMIT_PREPARED = 0x30;
const XLOG_XACT_ABORT_PREPARED = 0x40;
const XLOG_XACT_HAS_INFO = 0x80;
const XACT_XINFO_HAS_DBINFO = 1 << 0;
const XACT_XINFO_HAS_SUBXACTS = 1 << 1;
const XACT_XINFO_HAS_RELFILENODES = 1 << 2;

const XLOG_TBLSPC_CREATE = 0x00;
const XLOG_TBLSPC_DROP = 0x10;

const XLOG_PARAMETER_CHANGE = 0x60;
const XLOG_FPW_CHANGE = 0x80;
const WAL_LEVELS = ['minimal', 'replica', 'logical'] as const;

/** Cheap filter: true for the records (rmgr, xl_info) that may carry a {@link WalEvent}. */
export function mayCarryEvent(rmid: number, info: number): boolean {
  if (rmid === RM_XLOG_ID) {
    const i = info & 0xf0;
    return i === XLOG_PARAMETER_CHANGE || i === XLOG_FPW_CHANGE;
  }
  return rmid === RM_XACT_ID || rmid === RM_SMGR_ID || rmid === RM_DBASE_ID || rmid === RM_TBLSPC_ID;
}

/**
 * Interprets the main data of a storage, transaction, database or tablespace record and appends
 * what it changes as a whole to `out`. Returns false when the main data is too short for what
 * the record type requires (the caller reports that; it cannot happen in CRC-valid WAL from a
 * supported server).
 */
export function collectEvents(rec: WalRecord, out: WalEvent[]): boolean {
  const b = rec.buffer;
  const p = rec.mainDataOffset;
  const len = rec.mainDataLength;
  const info = rec.info & 0xf0;
  const lsn = rec.lsn;
  const u32 = (o: number) => b.readUInt32LE(p + o);
  switch (rec.rmid) {
    case RM_XLOG_ID:
      if (info === XLOG_PARAMETER_CHANGE) {
        // xl_parameter_change: five ints, then wal_level (int), wal_log_hints, track_commit_timestamp.
        if (len < 24) return false;
        const level = WAL_LEVELS[u32(20)];
        if (level === undefined) return false;
        out.push({ kind: 'wal-level-change', lsn, walLevel: level });
      } else if (info === XLOG_FPW_CHANGE) {
        if (len < 1) return false;
        out.push({ kind: 'full-page-writes-change', lsn, on: b[p] !== 0 });
      }
      return true;
    case RM_SMGR_ID:
      if (info === XLOG_SMGR_CREATE) {
        if (len < 16) return false;
        out.push({
          kind: 'relation-create',
          lsn,
          rel: { spcOid: u32(0), dbOid: u32(4), relNumber: u32(8) },
          fork: u32(12),
        });
      } else if (info === XLOG_SMGR_TRUNCATE) {
        if (len < 20) return false;
        const flags = u32(16);
        const forks: number[] = [];
        if (flags & SMGR_TRUNCATE_HEAP) forks.push(0);
        if (flags & SMGR_TRUNCATE_FSM) forks.push(1);
        if (flags & SMGR_TRUNCATE_VM) forks.push(2);
        out.push({
          kind: 'relation-truncate',
          lsn,
          rel: { spcOid: u32(4), dbOid: u32(8), relNumber: u32(12) },
          blocks: u32(0),
          forks,
        });
      }
      return true;
    case RM_XACT_ID: {
      const op = rec.info & XLOG_XACT_OPMASK;
      let via: 'commit' | 'abort' | 'commit-prepared' | 'abort-prepared';
      if (op === XLOG_XACT_COMMIT) via = 'commit';
      else if (op === XLOG_XACT_ABORT) via = 'abort';
      else if (op === XLOG_XACT_COMMIT_PREPARED) via = 'commit-prepared';
      else if (op === XLOG_XACT_ABORT_PREPARED) via = 'abort-prepared';
      else return true;
      // xl_xact_commit / xl_xact_abort: xact_time, then optional parts in a fixed order.
      let o = 8;
      if (!(rec.info & XLOG_XACT_HAS_INFO)) return len >= 8;
      if (len < o + 4) return false;
      const xinfo = u32(o);
      o += 4;
      if (xinfo & XACT_XINFO_HAS_DBINFO) o += 8;
      if (xinfo & XACT_XINFO_HAS_SUBXACTS) {
        if (len < o + 4) return false;
        o += 4 + 4 * u32(o);
      }
      if (xinfo & XACT_XINFO_HAS_RELFILENODES) {
        if (len < o + 4) return false;
        const n = u32(o);
        o += 4;
        if (len < o + 12 * n) return false;
        const rels: RelFileId[] = [];
        for (let i = 0; i < n; i++, o += 12) rels.push({ spcOid: u32(o), dbOid: u32(o + 4), relNumber: u32(o + 8) });
        if (n > 0) out.push({ kind: 'relation-drop', lsn, rels, via });
      }
      return len >= o;
    }
    case RM_DBASE_ID: {
      const walLogFormat = rec.major >= 15;
      const dropInfo = walLogFormat ? 0x20 : 0x10;
      if (info === 0x00) {
        // CREATE (before 15) / CREATE_FILE_COPY: db_id, tablespace_id, src_db_id, src_tablespace_id.
        if (len < 16) return false;
        out.push({
          kind: 'database-create',
          lsn,
          dbOid: u32(0),
          spcOid: u32(4),
          strategy: 'file_copy',
          srcDbOid: u32(8),
          srcSpcOid: u32(12),
        });
      } else if (walLogFormat && info === 0x10) {
        if (len < 8) return false;
        out.push({ kind: 'database-create', lsn, dbOid: u32(0), spcOid: u32(4), strategy: 'wal_log' });
      } else if (info === dropInfo) {
        // xl_dbase_drop_rec: db_id, ntablespaces, tablespace_ids[].
        if (len < 8) return false;
        const n = u32(4);
        if (len < 8 + 4 * n) return false;
        const spcOids: number[] = [];
        for (let i = 0; i < n; i++) spcOids.push(u32(8 + 4 * i));
        out.push({ kind: 'database-drop', lsn, dbOid: u32(0), spcOids });
      }
      return true;
    }
    case RM_TBLSPC_ID:
      if (info === XLOG_TBLSPC_CREATE) {
        if (len < 5) return false;
        const nul = b.indexOf(0, p + 4);
        const stop = nul < 0 || nul > p + len ? p + len : nul;
        out.push({ kind: 'tablespace-create', lsn, spcOid: u32(0), path: b.toString('utf8', p + 4, stop) });
      } else if (info === XLOG_TBLSPC_DROP) {
        if (len < 4) return false;
        out.push({ kind: 'tablespace-drop', lsn, spcOid: u32(0) });
      }
      return true;
    default:
      return true;
  }
}
