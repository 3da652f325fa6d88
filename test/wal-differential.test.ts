/**
 * Differential test: on WAL written by PostgreSQL 15 during a varied workload, the decoder
 * yields exactly the records and block references Debian's pg_waldump prints, record for record.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { withCluster } from './harness/cluster.js';
import { clientTool } from './harness/pg-binaries.js';
import { makeTempDir, removeTree, runOk, run } from './harness/os.js';
import { decodeWalFiles } from '../src/wal/decode-files.js';
import { FORK_NAMES } from '../src/wal/wal-constants.js';
import { lsnText } from '../src/wal/wal-decoder.js';
import { formatLsn, parseLsn } from '../src/util/lsn.js';
import { archiveCommand, inDir, runVariedWorkload, waitFor, walFileNames } from './wal-workload.js';

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

test('wal decoder: records and block references equal pg_waldump (PostgreSQL 15, varied workload)', async () => {
  const archive = makeTempDir('wal-archive');
  const tsDir = makeTempDir('wal-ts');
  try {
    await withCluster({ version: 15, conf: { archive_mode: 'on', archive_command: archiveCommand(archive), max_prepared_transactions: 5, wal_keep_size: '0' } }, async (cluster) => {
      await runVariedWorkload(cluster, join(tsDir, 'ts'), { bigRecords: true });
      const last = await cluster.switchWal();
      await waitFor(() => readdirSync(archive).includes(last), 60_000, `archiving of ${last}`);
    });
    const names = walFileNames(readdirSync(archive));
    assert.ok(names.length >= 3, `expected several archived segments, got ${names.length}`);
    const files = inDir(archive, names);
    const dump = await run(clientTool('pg_waldump'), ['-p', archive, names[0]!, names[names.length - 1]!]);
    const expected = waldumpRecords(dump.stdout);
    assert.ok(expected.length > 10000, `pg_waldump printed ${expected.length} records\n${dump.stderr}`);
    const got: string[] = [];
    const rmgrs = new Set<number>();
    let fpis = 0;
    const res = await decodeWalFiles(files, (r) => {
      rmgrs.add(r.rmid);
      const refs: string[] = [];
      for (let i = 0; i < r.blockCount; i++) {
        refs.push(`#${r.blockId[i]} ${r.spcOid[i]}/${r.dbOid[i]}/${r.relNumber[i]} ${FORK_NAMES[r.forkNum[i]!]} ${r.blockNo[i]}`);
        if (r.blockFlags[i]! & 0x10) fpis++;
      }
      got.push(`${lsnText(r.lsn)}|${refs.join(';')}`);
    });
    assert.equal(res.major, 15);
    // Record for record: report the first difference clearly rather than a 30000-line diff.
    const n = Math.min(got.length, expected.length);
    for (let i = 0; i < n; i++) {
      if (got[i] !== expected[i]) assert.fail(`record ${i} differs:\n  pgbart:     ${got[i]}\n  pg_waldump: ${expected[i]}`);
    }
    assert.equal(got.length, expected.length, `record count: pgbart ${got.length}, pg_waldump ${expected.length}`);
    for (const rm of [0, 1, 2, 4, 5, 9, 10, 11, 12, 13, 14, 15, 16, 17]) assert.ok(rmgrs.has(rm), `workload produced rmgr ${rm}`);
    assert.ok(fpis > 100, `full-page images seen: ${fpis}`);
    // pg_waldump's own summary agrees on the total as well.
    const stats = await runOk(clientTool('pg_waldump'), ['--stats', '-p', archive, names[0]!, names[names.length - 1]!]).catch((e: Error) => ({ stdout: e.message }));
    const total = /Total\s+(\d+)/.exec(stats.stdout);
    if (total) assert.equal(Number(total[1]), got.length);
  } finally {
    removeTree(archive);
    removeTree(tsDir);
  }
});
