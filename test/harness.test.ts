import { test } from 'node:test';
import assert from 'node:assert/strict';
import { withCluster } from './harness/cluster.js';
import { versionsUnderTest } from './harness/pg-binaries.js';
import { startWriter, tableFingerprints } from './harness/load.js';

for (const version of versionsUnderTest()) {
  test(`harness: PostgreSQL ${version} cluster starts, runs SQL, restarts and is removed`, async () => {
    let dataDir = '';
    await withCluster({ version }, async (cluster) => {
      dataDir = cluster.dataDir;
      const v = Number(await cluster.scalar('SHOW server_version_num'));
      assert.equal(Math.floor(v / 10000), version);
      assert.equal(await cluster.scalar('SHOW data_checksums'), 'on');
      const writer = await startWriter(cluster);
      await new Promise((r) => setTimeout(r, 300));
      const rows = await writer.stop();
      assert.ok(rows > 0);
      const before = await tableFingerprints(cluster);
      await cluster.restart();
      assert.deepEqual(await tableFingerprints(cluster), before);
    });
    const { existsSync } = await import('node:fs');
    assert.equal(existsSync(dataDir), false, 'cluster directory removed');
  });
}

test('harness: clusters copied from the per-version template each have their own system identifier', async () => {
  const version = versionsUnderTest()[0]!;
  const sysid = 'SELECT system_identifier::text FROM pg_control_system()';
  await withCluster({ version }, async (a) => {
    await withCluster({ version }, async (b) => {
      const ids = [await a.scalar(sysid), await b.scalar(sysid)];
      assert.notEqual(ids[0], ids[1], 'two clusters share a system identifier');
      // The WAL pages carry it too: a cluster that restarts and writes WAL accepts its own.
      await b.query('CREATE TABLE t AS SELECT 1 AS x');
      await b.switchWal();
      await b.restart();
      assert.equal(await b.scalar(sysid), ids[1]);
      assert.equal(await b.scalar('SELECT count(*)::int FROM t'), 1);
    });
  });
});
