import assert from 'node:assert/strict';
import { readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pgbenchInit } from './harness/load.js';
import { versionsUnderTest } from './harness/pg-binaries.js';
import {
  contentSnapshot,
  createIncrementalSource,
  manifestEntries,
  restoreAndCheck,
  takeBackup,
  tryBackup,
} from './harness/incremental.js';
import type { RestoreSource } from './harness/restore.js';

for (const version of versionsUnderTest()) {
  describe(`incremental backups, PostgreSQL ${version}`, { concurrency: false }, () => {
    let src: RestoreSource;
    const ids: string[] = [];
    const snaps: Record<string, string>[] = [];

    before(async () => {
      src = await createIncrementalSource(version);
      await pgbenchInit(src.cluster, 2);
      await src.cluster.query('CREATE TABLE tx (id bigserial PRIMARY KEY, batch int, payload text)');
      await src.cluster.query(
        "INSERT INTO tx (batch, payload) SELECT 0, repeat('x', 200) FROM generate_series(1, 5000)",
      );
    });
    after(async () => {
      await src?.destroy();
    });

    test('a chain full → incremental (tar) → incremental (plain, zstd) with writes in between restores each backup exactly', async () => {
      const c = src.cluster;
      // A chain whose full backup was taken with SHA256 (as before CRC32C became the default): its incrementals
      // keep SHA256, or restoring them would check the full's SHA-256 digests with another algorithm.
      ids.push(await takeBackup(src, undefined, ['--checksum-algorithm', 'SHA256']));
      snaps.push(await contentSnapshot(c));

      await c.query('UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 97 = 0 AND aid < 40000');
      await c.query("INSERT INTO tx (batch, payload) SELECT 1, repeat('y', 300) FROM generate_series(1, 3000)");
      await c.query('DELETE FROM tx WHERE id % 5 = 0 AND batch = 0');
      await c.query('CREATE TABLE born_later AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 2000) g');
      await c.query('DROP TABLE pgbench_history');
      ids.push(await takeBackup(src, ids[0]));
      snaps.push(await contentSnapshot(c));

      await c.query('UPDATE pgbench_accounts SET abalance = abalance - 3 WHERE aid % 211 = 0');
      await c.query('TRUNCATE born_later');
      await c.query("INSERT INTO born_later SELECT g, 'again' FROM generate_series(1, 10) g");
      await c.query('DELETE FROM tx WHERE batch = 1 AND id % 2 = 0');
      await c.query('VACUUM tx');
      ids.push(await takeBackup(src, ids[1], ['-F', 'p', '--compress', 'zstd']));
      snaps.push(await contentSnapshot(c));

      // Writes after the last backup: the restores stop at each backup's end, not here.
      await c.query("INSERT INTO tx (batch, payload) SELECT 9, 'after' FROM generate_series(1, 100)");

      for (const [i, id] of ids.entries())
        await restoreAndCheck(src, id, snaps[i]!, `backup #${i} (${id})`, { amcheck: i === ids.length - 1 });
    });

    test('an incremental stores changed blocks only, lists every file, and records its parent', async () => {
      const full = await manifestEntries(src, ids[0]!);
      const incr = await manifestEntries(src, ids[1]!);
      const accounts = String(await src.cluster.scalar("SELECT pg_relation_filepath('pgbench_accounts')"));
      const e = incr.get(`base:${accounts}`);
      assert.ok(e?.incr, `pgbench_accounts (${accounts}) is stored as blocks`);
      assert.ok(
        e.incr.runs.length > 0 && e.size < e.incr.length,
        `only some blocks stored: ${e.size} of ${e.incr.length} bytes`,
      );
      assert.equal(e.size, e.incr.runs.reduce((n, r) => n + r[1], 0) * 8192);
      const unchanged = [...incr.values()].filter((x) => x.incr && x.incr.runs.length === 0);
      assert.ok(unchanged.length > 50, `unchanged relation files are only listed (${unchanged.length})`);
      const branches = String(await src.cluster.scalar("SELECT pg_relation_filepath('pgbench_branches')"));
      assert.ok(
        full.has(`base:${branches}`) && incr.has(`base:${branches}`),
        'files unchanged since the full backup are listed',
      );
      assert.ok(
        [...incr.keys()].some((k) => k.startsWith('base:global/')),
        'global relations are listed',
      );
      for (const id of ids) {
        const info = readFileSync(join(src.setup.backupPath, src.server, id, 'backupinfo'), 'utf8');
        assert.match(info, /^CHECKSUM ALGORITHM: SHA256$/m, `backup ${id} checksums its files as its chain does`);
      }
      const show = await src.setup.bart(['SHOW-BACKUPS', '-s', src.server]);
      assert.equal(show.code, 0, show.stderr);
      assert.match(show.stdout, new RegExp(`${ids[1]}\\s+none\\s+${ids[0]}`), 'SHOW-BACKUPS shows the parent');
      const json = JSON.parse(
        (await src.setup.bart(['SHOW-BACKUPS', '-s', src.server, '--output', 'json'])).stdout,
      ) as Array<{ id: string; parent: string | null }>;
      assert.equal(json.find((s) => s.id === ids[1])!.parent, ids[0]);
      // Stored data, WAL excluded: the incremental holds the changed blocks and the small non-relation files.
      const dataBytes = (m: Map<string, { size: number }>) =>
        [...m].filter(([k]) => !k.startsWith('base:pg_wal/')).reduce((n, [, v]) => n + v.size, 0);
      assert.ok(
        dataBytes(incr) < dataBytes(full) / 3,
        `incremental stores ${dataBytes(incr)} bytes, the full ${dataBytes(full)}`,
      );
    });

    test('VERIFY-CHKSUM checks incrementals; a broken chain is reported and not restored', async () => {
      const v = await src.setup.bart(['VERIFY-CHKSUM', '-s', src.server]);
      assert.equal(v.code, 0, `${v.stdout}${v.stderr}`);
      for (const id of ids) assert.match(v.stdout, new RegExp(`${id}\\s+OK`));
      const dir = join(src.setup.backupPath, src.server, ids[1]!);
      renameSync(dir, `${dir}-moved`);
      try {
        const r = await src.restore(['-i', ids[2]!, '-p', join(src.scratch, 'broken-chain')]);
        assert.notEqual(r.code, 0);
        assert.match(
          r.stderr,
          new RegExp(
            `ERROR: .*backup ${ids[2]} needs its parent ${ids[1]}, which is no longer in the catalog \\(broken chain\\)`,
          ),
        );
        const show = await src.setup.bart(['SHOW-BACKUPS', '-s', src.server]);
        assert.equal(show.code, 0);
        assert.match(
          show.stderr,
          new RegExp(
            `WARNING: +server src: backup ${ids[2]} needs its parent ${ids[1]}, which is no longer in the catalog \\(broken chain\\); it cannot be restored`,
          ),
        );
        const b = await tryBackup(src, ['--parent', ids[2]!]);
        assert.notEqual(b.code, 0);
        assert.match(b.stderr, /broken chain/);
        const v2 = await src.setup.bart(['VERIFY-CHKSUM', '-s', src.server, '-i', ids[2]!]);
        assert.notEqual(v2.code, 0, 'VERIFY-CHKSUM fails an incremental whose chain is broken');
        assert.match(v2.stdout, /broken chain/);
      } finally {
        renameSync(`${dir}-moved`, dir);
      }
    });

    test('refusals: incrementals disabled, unknown parent, --check without --parent; --check reports', async () => {
      const chk = await tryBackup(src, ['--parent', ids[2]!, '--check']);
      assert.equal(chk.code, 0, chk.stderr);
      assert.match(chk.stdout, /check passed: an incremental backup can be taken/);
      let r = await tryBackup(src, ['--parent', 'nosuchbackup']);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /ERROR: +backup "nosuchbackup" not found for server src/);
      r = await tryBackup(src, ['--check']);
      assert.match(r.stderr, /ERROR: +--check needs --parent/);
      r = await tryBackup(src, ['--parent', ids[2]!, '--checksum-algorithm', 'CRC32C']);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /ERROR: +--checksum-algorithm applies to full backups/);
      src.configure(src.cluster, { allow_incremental_backups: 'disabled' });
      try {
        r = await tryBackup(src, ['--parent', ids[0]!]);
        assert.notEqual(r.code, 0);
        assert.match(r.stderr, /ERROR: +server src has allow_incremental_backups disabled/);
      } finally {
        src.configure(src.cluster, { allow_incremental_backups: 'enabled', mbm_scan_timeout: '2' });
      }
    });
  });
}
