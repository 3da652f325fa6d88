// MBM printing: bart-scanner -p, a modified block map shown as text or JSON.

import { formatLsn } from '../util/lsn.js';
import { FORK_NAMES } from '../postgres/constants.js';
import type { MbmEvent, ModifiedBlockMap } from './modified-block-map.js';

function lsn(n: number | bigint): string {
  return formatLsn(BigInt(n));
}

/** Compact block list: `0-3,7,9-12`. */
export function blockRanges(blocks: Uint32Array): string {
  const parts: string[] = [];
  let i = 0;
  while (i < blocks.length) {
    let j = i;
    while (j + 1 < blocks.length && blocks[j + 1] === blocks[j]! + 1) j++;
    parts.push(i === j ? `${blocks[i]}` : `${blocks[i]}-${blocks[j]}`);
    i = j + 1;
  }
  return parts.join(',');
}

/** An event as a JSON object (LSN as text). */
export function eventJson(e: MbmEvent): Record<string, unknown> {
  switch (e.kind) {
    case 'relation-drop':
      return {
        kind: e.kind,
        lsn: lsn(e.lsn),
        via: e.via,
        relations: e.rels.map((r) => ({ tablespace: r.spcOid, database: r.dbOid, relfilenode: r.relNumber })),
      };
    case 'database-create':
      return {
        kind: e.kind,
        lsn: lsn(e.lsn),
        tablespace: e.spcOid,
        database: e.dbOid,
        strategy: e.strategy,
        ...(e.strategy === 'file_copy' ? { sourceTablespace: e.srcSpcOid, sourceDatabase: e.srcDbOid } : {}),
      };
    case 'database-drop':
      return { kind: e.kind, lsn: lsn(e.lsn), database: e.dbOid, tablespaces: e.spcOids };
    case 'tablespace-create':
      return { kind: e.kind, lsn: lsn(e.lsn), tablespace: e.spcOid, path: e.path };
    case 'tablespace-drop':
      return { kind: e.kind, lsn: lsn(e.lsn), tablespace: e.spcOid };
    case 'wal-level-change':
      return { kind: e.kind, lsn: lsn(e.lsn), walLevel: e.walLevel };
    case 'full-page-writes-change':
      return { kind: e.kind, lsn: lsn(e.lsn), fullPageWrites: e.on };
  }
}

/** `bart-scanner -p FILE --output json`: the layout issue 5 specifies. */
export function mbmToJson(m: ModifiedBlockMap): string {
  return JSON.stringify({
    timeline: m.timeline,
    startLsn: lsn(m.startLsn),
    endLsn: lsn(m.endLsn),
    relations: m.relations.map((r) => ({
      tablespace: r.spcOid,
      database: r.dbOid,
      relfilenode: r.relNumber,
      fork: FORK_NAMES[r.fork] ?? String(r.fork),
      limit: r.limit,
      blocks: Array.from(r.blocks),
    })),
    events: m.events.map(eventJson),
  });
}

/** `bart-scanner -p FILE`: a readable listing in BART's spirit (one line per relation fork). */
export function mbmToText(m: ModifiedBlockMap, file: string): string {
  const lines = [
    `MBM FILE          : ${file}`,
    `TIMELINE          : ${m.timeline}`,
    `START LSN         : ${lsn(m.startLsn)}`,
    `END LSN           : ${lsn(m.endLsn)}`,
    `SYSTEM IDENTIFIER : ${m.systemId}`,
    `WAL RECORDS       : ${m.records}`,
    `RELATION FORKS    : ${m.relations.length}`,
    `EVENTS            : ${m.events.length}`,
    '',
    'TABLESPACE  DATABASE  RELFILENODE  FORK  LIMIT  BLOCKS',
  ];
  for (const r of m.relations) {
    lines.push(
      `${String(r.spcOid).padEnd(10)}  ${String(r.dbOid).padEnd(8)}  ${String(r.relNumber).padEnd(11)}  ${(FORK_NAMES[r.fork] ?? String(r.fork)).padEnd(4)}  ${(r.limit === null ? '-' : String(r.limit)).padEnd(5)}  ${blockRanges(r.blocks) || '-'}`,
    );
  }
  if (m.events.length) {
    lines.push('', 'EVENTS');
    for (const e of m.events) {
      const j = eventJson(e);
      const rest = Object.entries(j)
        .filter(([k]) => k !== 'kind' && k !== 'lsn')
        .map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : String(v)}`)
        .join(' ');
      lines.push(`${String(j.lsn).padEnd(12)}  ${e.kind}  ${rest}`);
    }
  }
  return lines.join('\n') + '\n';
}
