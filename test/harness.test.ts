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
