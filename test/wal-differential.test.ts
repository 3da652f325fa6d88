/**
 * Differential test: on WAL written by PostgreSQL 15 during a varied workload, the decoder
 * yields exactly the records and block references Debian's pg_waldump prints, record for record.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, readdirSync } from 'node:fs';
import { scanWalFile } from '../src/scanner/scan-wal-file.js';
import { loadChangeSet } from '../src/scanner/change-set.js';
import { join } from 'node:path';
import { withCluster } from './harness/cluster.js';
import { clientTool } from './harness/pg-binaries.js';
import { makeTempDir, removeTree, runOk, run } from './harness/os.js';
import { decodeWalFiles } from '../src/wal/decode-files.js';
import { collectEvents, mayCarryEvent, type RelFileId, type WalEvent } from '../src/wal/relation-events.js';
import { FORK_NAMES } from '../src/wal/constants.js';
import { lsnText } from '../src/wal/decoder.js';
import { formatLsn, parseLsn } from '../src/util/lsn.js';
import { archiveCommand, inDir, runVariedWorkload, walFileNames } from './harness/wal-workload.js';
import { waitFor } from './harness/wait.js';

/** One record as "LSN|blkref;blkref..." in pg_waldump's notation. */
function waldumpRecords(output: string): string[] {
  const out: string[] = [];
  for (const line of output.split('\n')) {
    const m = /lsn: ([0-9A-F]+\/[0-9A-F]+), prev/.exec(line);
    if (!m) continue;
    const refs: string[] = [];
    const re = /blkref #(\d+): rel (\d+)\/(\d+)\/(\d+)(?: forknum (\d+)| fork (\w+))? blk (\d+)/g;
    for (let r = re.exec(line); r; r = re.exec(line)) {
      const fork = r[6] ?? (r[5] !== undefined ? FORK_NAMES[Number(r[5])] : 'main');
      refs.push(`#${r[1]} ${r[2]}/${r[3]}/${r[4]} ${fork} ${r[7]}`);
    }
    out.push(`${formatLsn(parseLsn(m[1]!))}|${refs.join(';')}`);
  }
  return out;
}

/** Parses a relation path as pg_waldump prints it into "spc/db/rel fork". */
function relPath(path: string): string {
  let m = /^base\/(\d+)\/(\d+)(?:_(\w+))?$/.exec(path);
  if (m) return `1663/${m[1]}/${m[2]} ${m[3] ?? 'main'}`;
  m = /^global\/(\d+)(?:_(\w+))?$/.exec(path);
  if (m) return `1664/0/${m[1]} ${m[2] ?? 'main'}`;
  m = /^pg_tblspc\/(\d+)\/[^/]+\/(\d+)\/(\d+)(?:_(\w+))?$/.exec(path);
  if (m) return `${m[1]}/${m[2]}/${m[3]} ${m[4] ?? 'main'}`;
  throw new Error(`unexpected relation path in pg_waldump output: ${path}`);
}

/** Whole-relation/database events pg_waldump describes, as "LSN event" strings. */
function waldumpEvents(output: string): string[] {
  const out: string[] = [];
  for (const line of output.split('\n')) {
    const m = /^rmgr: (\w+)\s.*lsn: ([0-9A-F]+\/[0-9A-F]+), prev [^,]+, desc: (\w+) ?(.*)$/.exec(line);
    if (!m) continue;
    const [, rmgr, lsnRaw, op, rest] = m as unknown as [string, string, string, string, string];
    const lsn = formatLsn(parseLsn(lsnRaw));
    if (rmgr === 'Storage' && op === 'CREATE') out.push(`${lsn} create ${relPath(rest.trim())}`);
    else if (rmgr === 'Storage' && op === 'TRUNCATE') {
      const t = /^(\S+) to (\d+) blocks flags (\d+)/.exec(rest)!;
      out.push(`${lsn} truncate ${relPath(t[1]!)} ${t[2]} flags ${t[3]}`);
    } else if (rmgr === 'Transaction' && /rels: /.test(rest)) {
      const list = /rels: ([^;]*)/.exec(rest)![1]!.trim().split(/\s+/);
      for (const r of list) out.push(`${lsn} drop ${relPath(r)}`);
    } else if (rmgr === 'Database') {
      let d = /copy dir (\d+)\/(\d+) to (\d+)\/(\d+)/.exec(rest);
      if (d) out.push(`${lsn} dbcreate file_copy ${d[3]}/${d[4]} from ${d[1]}/${d[2]}`);
      else if ((d = /dir (\d+)\/(\d+)$/.exec(rest.trim())) && op === 'CREATE_WAL_LOG')
        out.push(`${lsn} dbcreate wal_log ${d[1]}/${d[2]}`);
      else if (op === 'DROP') {
        const dirs = [...rest.matchAll(/(\d+)\/(\d+)/g)];
        out.push(`${lsn} dbdrop ${dirs.map((x) => `${x[1]}/${x[2]}`).join(' ')}`);
      } else out.push(`${lsn} database ${op} ${rest}`);
    } else if (rmgr === 'XLOG' && op === 'PARAMETER_CHANGE') {
      out.push(`${lsn} wal_level ${/wal_level=(\w+)/.exec(rest)![1]}`);
    } else if (rmgr === 'XLOG' && op === 'FPW_CHANGE') {
      out.push(`${lsn} fpw ${rest.trim() === 'true' ? 'on' : 'off'}`);
    } else if (rmgr === 'Tablespace') out.push(`${lsn} tablespace ${op} ${/^\s*(\d+)/.exec(rest)?.[1] ?? rest}`);
  }
  return out;
}

function ourEvent(e: WalEvent): string[] {
  const lsn = lsnText(e.lsn);
  const rel = (r: RelFileId, fork = 0) => `${r.spcOid}/${r.dbOid}/${r.relNumber} ${FORK_NAMES[fork]}`;
  switch (e.kind) {
    case 'relation-create':
      return [`${lsn} create ${rel(e.rel, e.fork)}`];
    case 'relation-truncate': {
      const flags = (e.forks.includes(0) ? 1 : 0) | (e.forks.includes(2) ? 2 : 0) | (e.forks.includes(1) ? 4 : 0);
      return [`${lsn} truncate ${rel(e.rel)} ${e.blocks} flags ${flags}`];
    }
    case 'relation-drop':
      return e.rels.map((r) => `${lsn} drop ${rel(r)}`);
    case 'database-create':
      return [
        e.strategy === 'file_copy'
          ? `${lsn} dbcreate file_copy ${e.spcOid}/${e.dbOid} from ${e.srcSpcOid}/${e.srcDbOid}`
          : `${lsn} dbcreate wal_log ${e.spcOid}/${e.dbOid}`,
      ];
    case 'database-drop':
      return [`${lsn} dbdrop ${e.spcOids.map((s) => `${s}/${e.dbOid}`).join(' ')}`];
    case 'tablespace-create':
      return [`${lsn} tablespace CREATE ${e.spcOid}`];
    case 'tablespace-drop':
      return [`${lsn} tablespace DROP ${e.spcOid}`];
    case 'wal-level-change':
      return [`${lsn} wal_level ${e.walLevel}`];
    case 'full-page-writes-change':
      return [`${lsn} fpw ${e.on ? 'on' : 'off'}`];
  }
}

test('wal decoder: records and block references equal pg_waldump (PostgreSQL 15, varied workload)', async () => {
  const archive = makeTempDir('wal-archive');
  const tsDir = makeTempDir('wal-ts');
  try {
    await withCluster(
      {
        version: 15,
        conf: {
          archive_mode: 'on',
          archive_command: archiveCommand(archive),
          max_prepared_transactions: 5,
          wal_keep_size: '0',
        },
      },
      async (cluster) => {
        const methods = await runVariedWorkload(cluster, join(tsDir, 'ts'), { bigRecords: true });
        assert.ok(
          methods.includes('lz4') && methods.includes('zstd'),
          'Debian PostgreSQL 15 offers lz4 and zstd WAL compression',
        );
        const last = await cluster.switchWal();
        await waitFor(`archiving of ${last}`, () => readdirSync(archive).includes(last), { timeoutMs: 60_000 });
      },
    );
    const names = walFileNames(readdirSync(archive));
    assert.ok(names.length >= 3, `expected several archived segments, got ${names.length}`);
    const files = inDir(archive, names);
    const dump = await run(clientTool('pg_waldump'), ['-p', archive, names[0]!, names[names.length - 1]!]);
    const expected = waldumpRecords(dump.stdout);
    assert.ok(expected.length > 10000, `pg_waldump printed ${expected.length} records\n${dump.stderr}`);
    const got: string[] = [];
    const rmgrs = new Set<number>();
    let fpis = 0;
    const events: WalEvent[] = [];
    const res = await decodeWalFiles(files, (r) => {
      rmgrs.add(r.rmid);
      if (mayCarryEvent(r.rmid, r.info))
        assert.ok(collectEvents(r, events), `main data of ${lsnText(r.lsn)} too short`);
      const refs: string[] = [];
      for (let i = 0; i < r.blockCount; i++) {
        refs.push(
          `#${r.blockId[i]} ${r.spcOid[i]}/${r.dbOid[i]}/${r.relNumber[i]} ${FORK_NAMES[r.forkNum[i]!]} ${r.blockNo[i]}`,
        );
        if (r.blockFlags[i]! & 0x10) fpis++;
      }
      got.push(`${lsnText(r.lsn)}|${refs.join(';')}`);
    });
    assert.equal(res.major, 15);
    // Record for record: report the first difference clearly rather than a 30000-line diff.
    const n = Math.min(got.length, expected.length);
    for (let i = 0; i < n; i++) {
      if (got[i] !== expected[i])
        assert.fail(`record ${i} differs:\n  pgbart:     ${got[i]}\n  pg_waldump: ${expected[i]}`);
    }
    assert.equal(got.length, expected.length, `record count: pgbart ${got.length}, pg_waldump ${expected.length}`);
    for (const rm of [0, 1, 2, 4, 5, 9, 10, 11, 12, 13, 14, 15, 16, 17])
      assert.ok(rmgrs.has(rm), `workload produced rmgr ${rm}`);
    assert.ok(fpis > 100, `full-page images seen: ${fpis}`);
    // Whole-relation and database events equal pg_waldump's descriptions.
    const expectedEvents = waldumpEvents(dump.stdout);
    const gotEvents = events.flatMap(ourEvent);
    assert.deepEqual(gotEvents, expectedEvents);
    for (const kind of [
      'relation-create',
      'relation-truncate',
      'relation-drop',
      'database-create',
      'database-drop',
      'tablespace-create',
      'tablespace-drop',
      'wal-level-change',
      'full-page-writes-change',
    ]) {
      assert.ok(
        events.some((e) => e.kind === kind),
        `workload produced a ${kind} event`,
      );
    }
    assert.ok(
      events.some((e) => e.kind === 'database-create' && e.strategy === 'wal_log') &&
        events.some((e) => e.kind === 'database-create' && e.strategy === 'file_copy'),
    );
    assert.ok(
      events.some((e) => e.kind === 'relation-drop' && e.via === 'abort') &&
        events.some((e) => e.kind === 'relation-drop' && e.via === 'commit-prepared'),
    );
    // MBMs: scanning the segments one by one as they "arrive" gives, merged, exactly the blocks
    // pg_waldump lists; a segment whose last record continues in the next one waits for it.
    const scratch = makeTempDir('wal-scan');
    try {
      // Segments arrive one by one; after each arrival every unscanned segment is tried, in order.
      let waited = 0;
      let longWait = false;
      const unscanned: Array<{ name: string; since: number }> = [];
      for (let i = 0; i < names.length; i++) {
        copyFileSync(files[i]!, join(scratch, names[i]!));
        unscanned.push({ name: names[i]!, since: i });
        for (const u of [...unscanned]) {
          const r = await scanWalFile(join(scratch, u.name));
          if (r.status === 'waiting') {
            assert.equal(r.nextSegment, names[i + 1], `${u.name} waits for the segment not there yet`);
            waited++;
            continue;
          }
          if (i - u.since >= 2) longWait = true;
          unscanned.splice(unscanned.indexOf(u), 1);
        }
      }
      assert.deepEqual(unscanned, [], 'the last segment ends with XLOG_SWITCH, nothing waits at the end');
      assert.ok(waited > 0, 'some segment ended inside a record');
      assert.ok(longWait, 'the 33 MB record made a segment wait for the one after next');
      const first = parseLsn(expected[0]!.split('|')[0]!);
      const cs = await loadChangeSet(scratch, {
        timeline: 1,
        startLsn: first,
        endLsn: (BigInt(parseInt(names[names.length - 1]!.slice(16), 16)) + 1n) * 16777216n,
      });
      assert.deepEqual(cs.missingSegments, []);
      assert.equal(cs.mbmFiles.length, names.length);
      const want = new Map<string, Set<number>>();
      for (const rec of expected) {
        for (const ref of rec.split('|')[1]!.split(';').filter(Boolean)) {
          const [, rel, fork, blk] = ref.split(' ') as [string, string, string, string];
          const key = `${rel}/${FORK_NAMES.indexOf(fork)}`;
          if (!want.has(key)) want.set(key, new Set());
          want.get(key)!.add(Number(blk));
        }
      }
      const have = new Map<string, number[]>();
      for (const [key, f] of cs.relations) if (f.blocks.length) have.set(key, Array.from(f.blocks));
      assert.deepEqual([...have.keys()].sort(), [...want.keys()].sort());
      for (const [key, blocks] of have)
        assert.deepEqual(
          blocks,
          [...want.get(key)!].sort((a, b) => a - b),
          key,
        );
      assert.ok(
        [...cs.relations.values()].some((f) => f.limit === 0),
        'limits from creations',
      );
      assert.ok(cs.createdDatabases.length >= 2 && cs.createdTablespaces.length === 1);
    } finally {
      removeTree(scratch);
    }
    // pg_waldump's own summary agrees on the total as well.
    const stats = await runOk(clientTool('pg_waldump'), [
      '--stats',
      '-p',
      archive,
      names[0]!,
      names[names.length - 1]!,
    ]).catch((e: Error) => ({ stdout: e.message }));
    const total = /Total\s+(\d+)/.exec(stats.stdout);
    if (total) assert.equal(Number(total[1]), got.length);
  } finally {
    removeTree(archive);
    removeTree(tsDir);
  }
});
