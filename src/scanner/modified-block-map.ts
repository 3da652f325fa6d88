// Modified block map: the blocks and events one WAL range changed, per relation fork, and its builder.

import {
  BLOCK_SIZE,
  FSM_FORKNUM,
  INIT_FORKNUM,
  MAIN_FORKNUM,
  PAGE_HEADER_SIZE,
  VISIBILITYMAP_FORKNUM,
} from '../postgres/constants.js';
import type { RelFileId, WalEvent } from '../wal/relation-events.js';
import type { WalRecord } from '../wal/record.js';

/** Changes to one relation fork file within a WAL range. */
export interface ForkChanges {
  spcOid: number;
  dbOid: number;
  relNumber: number;
  /** 0 main, 1 fsm, 2 vm, 3 init. */
  fork: number;
  /**
   * Every block at or past this number counts as modified (the fork was created, truncated or
   * dropped in the range); null when only {@link blocks} changed.
   */
  limit: number | null;
  /** Modified block numbers, ascending, no duplicates. */
  blocks: Uint32Array;
}

/** Whole-object events kept in an MBM (creation and truncation are folded into fork limits). */
export type MbmEvent = Exclude<WalEvent, { kind: 'relation-create' } | { kind: 'relation-truncate' }>;

/** The content of one MBM file: what the WAL records starting in [startLsn, endLsn) changed. */
export interface ModifiedBlockMap {
  timeline: number;
  /** First record that starts in the segment. */
  startLsn: bigint;
  /** End of the segment: records starting before it are covered. */
  endLsn: bigint;
  systemId: bigint;
  segmentSize: number;
  /** xlp_magic of the WAL (identifies the PostgreSQL major version). */
  walMagic: number;
  /** The segment ended with XLOG_SWITCH. */
  endedWithSwitch: boolean;
  records: number;
  /** Sorted by tablespace, database, relfilenode, fork. */
  relations: ForkChanges[];
  events: MbmEvent[];
}

/**
 * Heap blocks per visibility-map page (HEAPBLOCKS_PER_PAGE for 8 KB pages: (8192 - 24) * 4), to
 * turn a heap truncation point into the VM fork's own limit.
 */
const HEAPBLOCKS_PER_VM_PAGE = (BLOCK_SIZE - PAGE_HEADER_SIZE) * 4;

interface ForkAcc {
  spcOid: number;
  dbOid: number;
  relNumber: number;
  fork: number;
  limit: number | null;
  blocks: Set<number>;
  /** Last block added: consecutive records mostly touch the same block, skip the Set then. */
  lastBlock: number;
  /** Next fork with the same relfilenode (another fork, database or tablespace): a short chain. */
  next: ForkAcc | undefined;
}

/** Key of a relation fork in maps: `spc/db/rel/fork`. */
export function forkKey(spcOid: number, dbOid: number, relNumber: number, fork: number): string {
  return `${spcOid}/${dbOid}/${relNumber}/${fork}`;
}

/**
 * Accumulates block references and events while WAL is decoded. The last fork touched is
 * cached, since consecutive records mostly touch the same relation. Forks are found by
 * relfilenode (a number key) and then a chain compared field by field: a string key per lookup
 * ({@link forkKey}) cost a string build and its garbage for every block reference that missed the
 * cache (profiled: 15% of a scan of full-page-image WAL).
 */
export class BlockMapBuilder {
  private readonly forks = new Map<number, ForkAcc>();
  readonly events: MbmEvent[] = [];
  private lastSpc = -1;
  private lastDb = -1;
  private lastRel = -1;
  private lastFork = -1;
  private last: ForkAcc | undefined;

  private acc(spcOid: number, dbOid: number, relNumber: number, fork: number): ForkAcc {
    if (
      spcOid === this.lastSpc &&
      dbOid === this.lastDb &&
      relNumber === this.lastRel &&
      fork === this.lastFork &&
      this.last
    )
      return this.last;
    const head = this.forks.get(relNumber);
    let a = head;
    while (a !== undefined && (a.fork !== fork || a.dbOid !== dbOid || a.spcOid !== spcOid)) a = a.next;
    if (a === undefined) {
      a = { spcOid, dbOid, relNumber, fork, limit: null, blocks: new Set(), lastBlock: -1, next: head };
      this.forks.set(relNumber, a);
    }
    this.lastSpc = spcOid;
    this.lastDb = dbOid;
    this.lastRel = relNumber;
    this.lastFork = fork;
    this.last = a;
    return a;
  }

  /** Adds every block reference of a record. */
  addRecordBlocks(r: WalRecord): void {
    for (let i = 0; i < r.blockCount; i++) {
      const a = this.acc(r.spcOid[i]!, r.dbOid[i]!, r.relNumber[i]!, r.forkNum[i]!);
      const b = r.blockNo[i]!;
      if (b !== a.lastBlock) {
        a.blocks.add(b);
        a.lastBlock = b;
      }
    }
  }

  private lower(rel: RelFileId, fork: number, limit: number): void {
    const a = this.acc(rel.spcOid, rel.dbOid, rel.relNumber, fork);
    if (a.limit === null || limit < a.limit) a.limit = limit;
  }

  /** Folds a whole-object event into fork limits (and keeps the ones that are not about forks). */
  addEvent(e: WalEvent): void {
    switch (e.kind) {
      case 'relation-create':
        this.lower(e.rel, e.fork, 0);
        return;
      case 'relation-truncate':
        for (const f of e.forks) {
          if (f === MAIN_FORKNUM) this.lower(e.rel, f, e.blocks);
          else if (f === VISIBILITYMAP_FORKNUM) this.lower(e.rel, f, Math.floor(e.blocks / HEAPBLOCKS_PER_VM_PAGE));
          // The FSM is not fully WAL-logged: its whole content counts as changed.
          else this.lower(e.rel, f, 0);
        }
        return;
      case 'relation-drop':
        // Conservative: should a file of that name exist later, nothing of the old one counts.
        for (const r of e.rels)
          for (const f of [MAIN_FORKNUM, FSM_FORKNUM, VISIBILITYMAP_FORKNUM, INIT_FORKNUM]) this.lower(r, f, 0);
        this.events.push(e);
        return;
      default:
        this.events.push(e);
    }
  }

  /** Fork changes sorted by tablespace, database, relfilenode, fork. */
  relations(): ForkChanges[] {
    const out: ForkChanges[] = [];
    for (const head of this.forks.values()) {
      for (let a: ForkAcc | undefined = head; a !== undefined; a = a.next) {
        const blocks = Uint32Array.from(a.blocks).sort();
        out.push({ spcOid: a.spcOid, dbOid: a.dbOid, relNumber: a.relNumber, fork: a.fork, limit: a.limit, blocks });
      }
    }
    out.sort(compareForks);
    return out;
  }
}

/** Orders fork changes by tablespace, database, relfilenode, fork. */
export function compareForks(a: ForkChanges, b: ForkChanges): number {
  return a.spcOid - b.spcOid || a.dbOid - b.dbOid || a.relNumber - b.relNumber || a.fork - b.fork;
}
