/**
 * A period with wal_level = minimal (bulk loads without block references) shows in the change
 * set, so the incremental backup can refuse it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, chownSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { withCluster } from './harness/cluster.js';
import { makeTempDir, removeTree, testUserIds } from './harness/os.js';
import { ensureMbms } from '../src/scanner/ensure-mbms.js';
import { loadChangeSet } from '../src/scanner/change-set.js';
import { parseLsn } from '../src/util/lsn.js';

test('change set: a wal_level = minimal period in the range is reported', async () => {
  const archive = makeTempDir('wal-level');
  try {
    await withCluster({ version: 15, conf: { max_wal_senders: 0 } }, async (c) => {
      await c.switchWal();
      const start = parseLsn(String(await c.scalar('SELECT pg_current_wal_insert_lsn()::text')));
      await c.stop('fast');
      c.writeConf({ wal_level: 'minimal' });
      await c.start();
      await c.query(`BEGIN; CREATE TABLE bulk (a int); INSERT INTO bulk SELECT generate_series(1, 100000); COMMIT`);
      await c.stop('fast');
      c.writeConf({ wal_level: 'replica' });
      await c.start();
      const end = parseLsn(String(await c.scalar('SELECT pg_current_wal_insert_lsn()::text')));
      const last = await c.switchWal();
      // No archiving with wal_level = minimal: take the complete segments from pg_wal.
      for (const n of readdirSync(join(c.dataDir, 'pg_wal')).filter((x) => /^[0-9A-F]{24}$/.test(x) && x <= last)) {
        copyFileSync(join(c.dataDir, 'pg_wal', n), join(archive, n));
      }
      const ids = testUserIds();
      if (ids) for (const n of readdirSync(archive)) chownSync(join(archive, n), ids.uid, ids.gid);
      const req = { timeline: 1, startLsn: start, endLsn: end };
      const ensured = await ensureMbms(archive, req);
      assert.equal(ensured.complete, true, JSON.stringify(ensured));
      const cs = await loadChangeSet(archive, req);
      assert.deepEqual(cs.missingSegments, []);
      assert.equal(cs.walLevelMinimal, true);
      const levels = cs.events
        .filter((e) => e.kind === 'wal-level-change')
        .map((e) => (e.kind === 'wal-level-change' ? e.walLevel : ''));
      assert.deepEqual(levels, ['minimal', 'replica']);
    });
  } finally {
    removeTree(archive);
  }
});
