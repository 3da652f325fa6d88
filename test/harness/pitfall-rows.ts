// Test harness: the incremental pitfall rows (../shared/incremental-pitfalls.md), registered in two halves, one per test file.

import assert from 'node:assert/strict';
import { chownSync, existsSync, mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { ChangeSet } from '../../src/scanner/change-set.js';
import { selectBlocks } from '../../src/backup/incremental-backup.js';
import { fileKey } from '../../src/catalog/incremental-format.js';
import type { RestoredState } from '../../src/catalog/chain.js';
import { forkKey } from '../../src/scanner/modified-block-map.js';
import { TestCluster } from './cluster.js';
import { pgbenchInit, startWriter } from './load.js';
import { removeTree, runOk, testUserIds } from './os.js';
import { DEBIAN_PG15_BIN, versionsUnderTest } from './pg-binaries.js';
import {
  contentSnapshot,
  createIncrementalSource,
  manifestEntries,
  relationPath,
  restoreAndCheck,
  takeBackup,
  tryBackup,
} from './incremental.js';
import { freshPath, startRestored, waitPromoted, type RestoreSource } from './restore.js';
import { e2eOnly } from './test-size.js';

/**
 * The slowest rows, run in `npm run test:e2e` only, with what covers their ground in npm test. The
 * next row then builds on the row before (each takes its incremental on whatever the parent is).
 */
const HEAVY_ROWS: Record<string, string> = {
  'pitfall: timeline switch: a parent on the history is followed, one off it is refused':
    'timelines: MBMs across a switch in scanner-timeline, a backup on timeline 2 restored with -t in pitr',
  'pitfall: hint-bit-only changes (checksums on: WAL-logged) restore pages with valid checksums':
    'restored incrementals with checksums on: pg_amcheck in the relfilenode row, page checks in page-checksum',
};

/** The two halves of the pitfall rows: each builds its own source cluster and its own chain of incrementals. */
export type PitfallGroup = 'a' | 'b';

/**
 * Registers the rows of one half. The rows once formed one chain of 15 incrementals, and a RESTORE
 * applies every link of its chain: the late rows' restores took most of the file's 5 minutes (from 7 s
 * at depth 1 to 80 s at depth 9 on this loaded machine). Two independent chains halve the depth, and the
 * two files run in parallel. Rows that share tables (shrink, t_new) stay in one half, in their old order.
 */
export function registerPitfallRows(group: PitfallGroup): void {
  /** Registers a row of `rowGroup` when that is the half being registered (a heavy row: e2e only). */
  const row = (rowGroup: PitfallGroup, title: string, fn: () => void | Promise<void>): void => {
    const heavy = HEAVY_ROWS[title];
    if (rowGroup === group) test(title, { skip: heavy === undefined ? false : e2eOnly(heavy) }, fn);
  };

  /**
   * One named test per row of ../shared/incremental-pitfalls.md. Each takes an incremental on top of
   * the previous backup after the scenario, restores it to the moment it became consistent, and
   * compares every table, sequence and large object with the source (plus what is specific to the
   * row: file lengths, files whole or as blocks, files gone).
   */

  row('a', 'pitfall: relation files over 1 GB map block N to segment N / 131072 at offset N % 131072', () => {
    const cs = {
      timeline: 1,
      startLsn: 0n,
      endLsn: 1n,
      relations: new Map(),
      createdDatabases: [],
      droppedDatabases: [],
      createdTablespaces: [],
      droppedTablespaces: [],
      events: [],
      missingSegments: [],
      mbmFiles: [],
    } as unknown as ChangeSet;
    cs.relations.set(forkKey(1663, 5, 16384, 0), {
      spcOid: 1663,
      dbOid: 5,
      relNumber: 16384,
      fork: 0,
      limit: null,
      blocks: Uint32Array.from([3, 131072 + 5, 131072 + 7, 2 * 131072 + 1]),
    });
    const seg = 131072 * 8192;
    const parent: RestoredState = {
      files: new Map([
        [fileKey('base', 'base/5/16384'), { length: seg, mode: 0o600 }],
        [fileKey('base', 'base/5/16384.1'), { length: seg, mode: 0o600 }],
        [fileKey('base', 'base/5/16384.2'), { length: 4 * 8192, mode: 0o600 }],
      ]),
      others: new Map(),
      archives: new Map(),
    };
    const file = (path: string, size: number) => ({ path, type: 'file' as const, size, mode: 0o600, mtimeMs: 0 });
    assert.deepEqual(selectBlocks('base', file('base/5/16384', seg), parent, cs), [3]);
    assert.deepEqual(selectBlocks('base', file('base/5/16384.1', seg), parent, cs), [5, 7]);
    // The third segment grew from 4 to 6 blocks: block 1 changed, blocks 4 and 5 are new.
    assert.deepEqual(selectBlocks('base', file('base/5/16384.2', 6 * 8192), parent, cs), [1, 4, 5]);
    // A truncation limit inside the second segment makes everything from there on modified.
    cs.relations.get(forkKey(1663, 5, 16384, 0))!.limit = 131072 + 131070;
    assert.deepEqual(selectBlocks('base', file('base/5/16384.1', seg), parent, cs), [5, 7, 131070, 131071]);
    assert.equal(
      selectBlocks('base', file('base/5/16384.2', 6 * 8192), parent, cs),
      undefined,
      'past the limit: the whole segment',
    );
  });

  // Every row costs a restore: by default the newest version under test runs them (npm test stays
  // short); naming versions explicitly (PGBART_TEST_PG=15,17 or all) runs them on each. The other
  // versions are registered as skipped, so the report shows they did not run.
  const pitfallVersions = process.env.PGBART_TEST_PG ? versionsUnderTest() : versionsUnderTest().slice(-1);

  for (const version of versionsUnderTest()) {
    const skip = pitfallVersions.includes(version)
      ? false
      : `by default the pitfall rows run on the newest version under test only; PGBART_TEST_PG=${version} runs them here`;
    describe(`incremental pitfalls (part ${group}), PostgreSQL ${version}`, { concurrency: false, skip }, () => {
      let src: RestoreSource;
      let c: TestCluster;
      let parent = '';
      let tsDir = '';
      let tsOid = 0;
      /** Rows the timeline row (test:e2e only) added to t_new on timeline 1: later rows count them. */
      let tli1OnlyRows = 0;

      /** Takes an incremental on the current parent, snapshots the source, and makes it the next parent. */
      const incremental = async (): Promise<{ id: string; snap: Record<string, string> }> => {
        const id = await takeBackup(src, parent);
        const snap = await contentSnapshot(c);
        parent = id;
        return { id, snap };
      };
      const mapArg = () => `${tsOid}=${freshPath(src, 'ts')}`;

      before(async () => {
        src = await createIncrementalSource(version);
        c = src.cluster;
        await c.query('ALTER SYSTEM SET autovacuum = off');
        await c.query('SELECT pg_reload_conf()');
        tsDir = join(src.scratch, 'tablespace');
        mkdirSync(tsDir);
        const ids = testUserIds();
        if (ids) chownSync(tsDir, ids.uid, ids.gid);
        await c.query(`CREATE TABLESPACE ts1 LOCATION '${tsDir}'`);
        tsOid = Number(await c.scalar("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'"));
        await pgbenchInit(c, 1);
        await c.query('CREATE EXTENSION pg_visibility');
        await c.query('CREATE TABLE shrink (id int, pad text) WITH (fillfactor = 50)');
        await c.query("INSERT INTO shrink SELECT g, repeat('s', 500) FROM generate_series(1, 20000) g");
        // All pages all-visible before the full backup, so later VACUUMs touch only the pages they change.
        await c.query('VACUUM shrink');
        for (const t of ['t_drop', 't_trunc', 't_vacfull', 't_cluster', 't_reindex']) {
          await c.query(`CREATE TABLE ${t} (id int PRIMARY KEY, v text)`);
          await c.query(`INSERT INTO ${t} SELECT g, md5(g::text) FROM generate_series(1, 3000) g`);
        }
        await c.query('CREATE TABLE in_ts (id int, v text) TABLESPACE ts1');
        await c.query('INSERT INTO in_ts SELECT g, md5(g::text) FROM generate_series(1, 20000) g');
        // Hint bits set now: with data checksums, setting them later would WAL-log every page.
        await c.query('VACUUM in_ts');
        await c.query('CREATE DATABASE to_drop');
        await c.query('CREATE DATABASE to_move');
        await c.query('CREATE TABLE moving AS SELECT g FROM generate_series(1, 1000) g', [], 'to_move');
        await c.query('CREATE DATABASE tmpl');
        await c.query(
          "CREATE TABLE from_template AS SELECT g, 'template' AS src FROM generate_series(1, 500) g",
          [],
          'tmpl',
        );
        if (version >= 15) {
          await c.query('CREATE DATABASE reused OID = 60000');
          await c.query(
            "CREATE TABLE old_content AS SELECT g, 'old' AS v FROM generate_series(1, 5000) g",
            [],
            'reused',
          );
        }
        await c.query('CHECKPOINT');
        parent = await takeBackup(src);
      });
      after(async () => {
        await src?.destroy();
      });

      row(
        'a',
        'pitfall: relation truncation (VACUUM tail truncation, then re-extension): new length recorded, restore truncates',
        async () => {
          const path = await relationPath(c, 'shrink');
          await c.query('DELETE FROM shrink WHERE id > 2000');
          await c.query('VACUUM shrink');
          await c.query("INSERT INTO shrink SELECT g, repeat('n', 500) FROM generate_series(30001, 30500) g");
          const size = Number(await c.scalar("SELECT pg_relation_size('shrink')"));
          const before = (await manifestEntries(src, parent)).get(`base:${path}`)!;
          const { id, snap } = await incremental();
          const e = (await manifestEntries(src, id)).get(`base:${path}`)!;
          assert.ok(e.incr, 'stored as blocks');
          assert.equal(e.incr.length, size, 'the new (shorter) length is recorded');
          assert.ok(e.incr.length < (before.incr?.length ?? before.size), 'the file shrank');
          await restoreAndCheck(src, id, snap, 'truncation', {
            tablespaceMap: mapArg(),
            inspect: async (r) =>
              assert.equal(
                Number(await r.scalar("SELECT pg_relation_size('shrink')")),
                size,
                'restored file has the truncated length',
              ),
          });
        },
      );

      row(
        'a',
        'pitfall: relations created, dropped, or given a new relfilenode (CREATE, DROP, TRUNCATE, VACUUM FULL, CLUSTER, REINDEX)',
        async () => {
          const dropped = await relationPath(c, 't_drop');
          const oldTrunc = await relationPath(c, 't_trunc');
          await c.query('CREATE TABLE t_new AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 4000) g');
          await c.query('DROP TABLE t_drop');
          await c.query('TRUNCATE t_trunc');
          await c.query("INSERT INTO t_trunc SELECT g, 'after truncate' FROM generate_series(1, 100) g");
          await c.query('DELETE FROM t_vacfull WHERE id % 3 = 0');
          await c.query('VACUUM FULL t_vacfull');
          await c.query('CLUSTER t_cluster USING t_cluster_pkey');
          await c.query('REINDEX INDEX t_reindex_pkey');
          const { id, snap } = await incremental();
          const m = await manifestEntries(src, id);
          assert.equal(m.has(`base:${dropped}`), false, 'the dropped file is not listed');
          const newPath = await relationPath(c, 't_new');
          assert.equal(m.get(`base:${newPath}`)?.incr, undefined, 'a new relation file is stored whole');
          await restoreAndCheck(src, id, snap, 'new relfilenodes', {
            tablespaceMap: mapArg(),
            amcheck: true,
            inspect: async (_r, dir) => {
              assert.equal(
                existsSync(join(dir, dropped)),
                false,
                `dropped relation file ${dropped} is removed on restore`,
              );
              assert.equal(
                existsSync(join(dir, oldTrunc)),
                false,
                `pre-TRUNCATE file ${oldTrunc} is removed on restore`,
              );
            },
          });
        },
      );

      row(
        'b',
        'pitfall: CREATE DATABASE with file copy, including a database dropped and recreated under the same OID',
        async () => {
          const strategy = version >= 15 ? ' STRATEGY FILE_COPY' : '';
          await c.query(`CREATE DATABASE copied TEMPLATE tmpl${strategy}`);
          if (version >= 15) {
            await c.query('DROP DATABASE reused');
            // Same OID, same relfilenodes for the catalog files (copied from the template), no block references.
            await c.query('CREATE DATABASE reused OID = 60000 TEMPLATE tmpl STRATEGY FILE_COPY');
          }
          const { id, snap } = await incremental();
          const m = await manifestEntries(src, id);
          const copiedOid = String(await c.scalar("SELECT oid FROM pg_database WHERE datname = 'copied'"));
          for (const [k, e] of m)
            if (k.startsWith(`base:base/${copiedOid}/`) || k.startsWith('base:base/60000/'))
              assert.equal(e.incr, undefined, `${k} stored whole`);
          assert.ok(snap['copied:public.from_template'], 'the copied database has the template table');
          if (version >= 15)
            assert.equal(
              snap['reused:public.old_content'],
              undefined,
              'the recreated database has none of the old content',
            );
          await restoreAndCheck(src, id, snap, 'file-copy databases', { tablespaceMap: mapArg() });
        },
      );

      row('b', 'pitfall: CREATE DATABASE with WAL_LOG strategy (PostgreSQL 15+) or the default strategy', async () => {
        await c.query(`CREATE DATABASE walloged TEMPLATE tmpl${version >= 15 ? ' STRATEGY WAL_LOG' : ''}`);
        await c.query("INSERT INTO from_template SELECT g, 'later' FROM generate_series(1, 10) g", [], 'walloged');
        const { id, snap } = await incremental();
        assert.equal(snap['walloged:public.from_template']!.split(':')[0], '510');
        const oid = String(await c.scalar("SELECT oid FROM pg_database WHERE datname = 'walloged'"));
        const files = [...(await manifestEntries(src, id))].filter(([k]) => k.startsWith(`base:base/${oid}/`));
        assert.ok(files.length > 100, 'the new database is listed');
        for (const [k, e] of files)
          assert.equal(e.incr, undefined, `${k}: files new since the parent are stored whole`);
      });

      row('b', 'pitfall: DROP DATABASE and ALTER DATABASE SET TABLESPACE leave nothing behind on restore', async () => {
        const dropOid = String(await c.scalar("SELECT oid FROM pg_database WHERE datname = 'to_drop'"));
        const moveOid = String(await c.scalar("SELECT oid FROM pg_database WHERE datname = 'to_move'"));
        await c.query('DROP DATABASE to_drop');
        await c.query('ALTER DATABASE to_move SET TABLESPACE ts1');
        const { id, snap } = await incremental();
        const tsPath = freshPath(src, 'ts');
        await restoreAndCheck(src, id, snap, 'dropped and moved databases', {
          tablespaceMap: `${tsOid}=${tsPath}`,
          inspect: async (r, dir) => {
            assert.equal(existsSync(join(dir, 'base', dropOid)), false, 'dropped database directory removed');
            assert.equal(existsSync(join(dir, 'base', moveOid)), false, 'moved database left the default tablespace');
            const pgdir = readdirSync(tsPath).find((n) => n.startsWith('PG_'))!;
            assert.ok(existsSync(join(tsPath, pgdir, moveOid)), 'moved database is in the tablespace');
            assert.equal(await r.scalar('SELECT count(*)::int FROM moving', [], 'to_move'), 1000);
          },
        });
      });

      row('b', 'pitfall: free space map forks are always copied whole', async () => {
        await c.query('DELETE FROM pgbench_accounts WHERE aid % 10 = 0');
        await c.query('VACUUM pgbench_accounts');
        const { id, snap } = await incremental();
        const fsms = [...(await manifestEntries(src, id))].filter(([k]) => k.endsWith('_fsm'));
        assert.ok(fsms.length > 5, 'FSM forks are listed');
        for (const [k, e] of fsms) assert.equal(e.incr, undefined, `${k} is stored whole`);
        assert.ok(snap['postgres:public.pgbench_accounts']);
      });

      row(
        'a',
        'pitfall: visibility map forks: bits cleared without a VM block reference, and VM truncation, restore correctly',
        async () => {
          const vmPath = `${await relationPath(c, 'shrink')}_vm`;
          // UPDATE clears the all-visible bit of its heap page through a flag of the heap record: the VM
          // page has no block reference of its own, so taking only MBM blocks would restore a stale bit.
          // First the heap is truncated (the VM's own limit: its page 0 counts as changed) ...
          await c.query('DELETE FROM shrink WHERE id > 1800');
          await c.query('VACUUM shrink');
          await incremental();
          // ... then, in the next range, UPDATE clears all-visible bits through heap-record flags.
          await c.query('UPDATE shrink SET pad = pad WHERE id IN (3, 1500)');
          const { id, snap } = await incremental();
          const vmBits =
            "SELECT string_agg(CASE WHEN all_visible THEN '1' ELSE '0' END, '' ORDER BY blkno) FROM pg_visibility_map('shrink')";
          const expectedBits = await c.scalar(vmBits);
          assert.match(String(expectedBits), /0/, 'some all-visible bits were cleared');
          const e = (await manifestEntries(src, id)).get(`base:${vmPath}`);
          assert.ok(e && e.incr === undefined, 'the VM fork is stored whole');
          await restoreAndCheck(src, id, snap, 'vm', {
            tablespaceMap: mapArg(),
            inspect: async (r) => {
              await r.query('CREATE EXTENSION IF NOT EXISTS pg_visibility');
              assert.equal(await r.scalar(vmBits), expectedBits, "the restored visibility map equals the source's");
              assert.equal(
                await r.scalar("SELECT count(*)::int FROM pg_check_visible('shrink')"),
                0,
                'no page marked all-visible holds invisible tuples',
              );
              assert.equal(await r.scalar("SELECT count(*)::int FROM pg_check_frozen('shrink')"), 0);
            },
          });
        },
      );

      row('b', 'pitfall: unlogged relations: only the init fork is backed up, the table restores empty', async () => {
        await c.query('CREATE UNLOGGED TABLE scratch AS SELECT g FROM generate_series(1, 5000) g');
        const path = await relationPath(c, 'scratch');
        const { id, snap } = await incremental();
        const m = await manifestEntries(src, id);
        assert.ok(m.has(`base:${path}_init`), 'init fork listed');
        assert.equal(m.has(`base:${path}`), false, 'main fork of an unlogged table is not backed up');
        assert.equal(
          snap['postgres:public.scratch'],
          undefined,
          'unlogged tables are not part of the content compared',
        );
      });

      row(
        'b',
        'pitfall: torn pages: an incremental taken under concurrent writes is fixed by WAL replay (full_page_writes)',
        async () => {
          const writer = await startWriter(c, 'torn');
          await new Promise((r) => setTimeout(r, 300));
          await c.query('UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid < 20000');
          const id = await takeBackup(src, parent);
          parent = id;
          await writer.stop();
          const path = freshPath(src, 'torn');
          const r = await src.restore([
            '-i',
            id,
            '-p',
            path,
            '-c',
            '--target-immediate',
            '--target-action',
            'promote',
            '--tablespace-map',
            mapArg(),
          ]);
          assert.equal(r.code, 0, r.stderr);
          const restored = await startRestored(version, path);
          try {
            await waitPromoted(restored);
            const [n, max] = (
              await restored.query<{ n: string; m: string }>(
                'SELECT count(*)::text AS n, coalesce(max(id), 0)::text AS m FROM torn',
              )
            ).map((x) => [x.n, x.m])[0]!;
            assert.equal(n, max, 'rows committed during the backup form a gap-free prefix');
            assert.equal(
              await restored.scalar('SELECT sum(abalance)::int FROM pgbench_accounts WHERE aid < 20000'),
              await c.scalar('SELECT sum(abalance)::int FROM pgbench_accounts WHERE aid < 20000'),
            );
          } finally {
            await restored.destroy();
            removeTree(path);
          }
        },
      );

      row(
        'b',
        'pitfall: hint-bit-only changes (checksums on: WAL-logged) restore pages with valid checksums',
        async () => {
          await c.query('CREATE TABLE hinted AS SELECT g, md5(g::text) AS v FROM generate_series(1, 20000) g');
          await incremental();
          await c.query('CHECKPOINT');
          await c.query('SELECT count(*) FROM hinted'); // sets hint bits on every page
          const { id, snap } = await incremental();
          await restoreAndCheck(src, id, snap, 'hint bits', {
            tablespaceMap: mapArg(),
            amcheck: true,
            inspect: async (r) => assert.equal(await r.scalar('SHOW data_checksums'), 'on'),
          });
        },
      );

      row('a', 'pitfall: timeline switch: a parent on the history is followed, one off it is refused', async () => {
        // A restore of the current parent, promoted: timeline 2 branches off at that backup's end.
        const branchPoint = parent;
        await c.query("INSERT INTO t_new SELECT g, 'tli1 only' FROM generate_series(100001, 100100) g");
        tli1OnlyRows = 100;
        const offHistory = (await incremental()).id;
        const path = freshPath(src, 'tli2');
        const r = await src.restore([
          '-i',
          branchPoint,
          '-p',
          path,
          '-c',
          '--target-immediate',
          '--target-action',
          'promote',
          '--tablespace-map',
          `${tsOid}=${freshPath(src, 'ts')}`,
        ]);
        assert.equal(r.code, 0, r.stderr);
        const promoted = await startRestored(version, path);
        try {
          await waitPromoted(promoted);
          const history = readdirSync(join(path, 'pg_wal')).find((n) => n.endsWith('.history'))!;
          await runOk('cp', [join(path, 'pg_wal', history), join(src.archivePath, history)]);
          await promoted.query(`ALTER SYSTEM SET archive_mode = 'on'`);
          await promoted.query(
            `ALTER SYSTEM SET archive_command = 'test ! -f ${src.archivePath}/%f && cp %p ${src.archivePath}/%f'`,
          );
          await promoted.restart();
          await promoted.query("INSERT INTO t_new SELECT g, 'tli2' FROM generate_series(200001, 200050) g");
          src.configure(promoted, { allow_incremental_backups: 'enabled', mbm_scan_timeout: '2' });
          const refused = await tryBackup(src, ['--parent', offHistory]);
          assert.notEqual(refused.code, 0);
          assert.match(
            refused.stderr,
            new RegExp(`ERROR: +parent backup ${offHistory} .* is not an ancestor of the server's current timeline 2`),
          );
          const id = await takeBackup(src, branchPoint);
          const snap = await contentSnapshot(promoted);
          assert.equal(snap['postgres:public.t_new']!.split(':')[0], '4050');
          await restoreAndCheck(src, id, snap, 'timeline 2', { tablespaceMap: mapArg() });
        } finally {
          src.configure(c, { allow_incremental_backups: 'enabled', mbm_scan_timeout: '2' });
          await promoted.destroy();
          removeTree(path);
          parent = offHistory;
        }
      });

      row('b', 'pitfall: tablespaces: blocks are keyed by tablespace and restored to the mapped location', async () => {
        await c.query("UPDATE in_ts SET v = v || '!' WHERE id < 2000 AND id % 50 = 0");
        await c.query('CREATE TABLE new_in_ts TABLESPACE ts1 AS SELECT g FROM generate_series(1, 3000) g');
        const path = String(await c.scalar("SELECT pg_relation_filepath('in_ts')")).replace(/^pg_tblspc\/\d+\//, '');
        const { id, snap } = await incremental();
        const e = (await manifestEntries(src, id)).get(`${tsOid}:${path}`);
        assert.ok(e?.incr && e.incr.runs.length > 0, 'the tablespace file is stored as its changed blocks');
        await restoreAndCheck(src, id, snap, 'tablespace', { tablespaceMap: mapArg() });
      });

      row(
        'a',
        'pitfall: non-relation files (pg_control, pg_xact, pg_filenode.map, config files) are always copied whole',
        async () => {
          await c.query("ALTER SYSTEM SET work_mem = '7MB'");
          await c.query("INSERT INTO t_new SELECT g, 'xact' FROM generate_series(300001, 300010) g");
          const { id, snap } = await incremental();
          const m = await manifestEntries(src, id);
          const dbOid = String(await c.scalar("SELECT oid FROM pg_database WHERE datname = 'postgres'"));
          for (const k of [
            'base:global/pg_control',
            'base:pg_xact/0000',
            `base:base/${dbOid}/pg_filenode.map`,
            'base:global/pg_filenode.map',
            'base:postgresql.auto.conf',
            'base:PG_VERSION',
          ]) {
            assert.ok(m.has(k), `${k} listed`);
            assert.equal(m.get(k)!.incr, undefined, `${k} stored whole`);
          }
          assert.ok(snap['postgres:public.t_new']);
        },
      );

      row(
        'a',
        'pitfall: WAL not yet scanned is scanned on the spot; WAL missing is refused naming the segment',
        async () => {
          // Not yet scanned: remove every MBM; the backup scans the archive itself and succeeds.
          for (const n of readdirSync(src.archivePath)) if (n.endsWith('.mbm')) rmSync(join(src.archivePath, n));
          await c.query("INSERT INTO t_new SELECT g, 'unscanned' FROM generate_series(400001, 400010) g");
          const { id, snap } = await incremental();
          assert.ok(
            readdirSync(src.archivePath).some((n) => n.endsWith('.mbm')),
            'MBMs were made',
          );
          const e = (await manifestEntries(src, id)).get(`base:${await relationPath(c, 't_new')}`);
          assert.ok(
            e?.incr && e.incr.runs.length > 0 && e.incr.runs.length < 20,
            'the change set came from the MBMs made on the spot',
          );
          assert.equal(snap['postgres:public.t_new']!.split(':')[0], String(4000 + tli1OnlyRows + 10 + 10));
          // Missing: one segment of the range disappears from the archive.
          await c.query("INSERT INTO t_new SELECT g, 'gap' FROM generate_series(500001, 500010) g");
          await src.archiveCurrentWal();
          await src.archiveCurrentWal();
          const segs = readdirSync(src.archivePath)
            .filter((n) => /^00000001[0-9A-F]{16}$/.test(n))
            .sort();
          const victim = segs[segs.length - 2]!;
          for (const n of readdirSync(src.archivePath)) if (n.endsWith('.mbm')) rmSync(join(src.archivePath, n));
          renameSync(join(src.archivePath, victim), join(src.scratch, victim));
          try {
            const chk = await tryBackup(src, ['--parent', parent, '--check']);
            assert.notEqual(chk.code, 0);
            assert.match(chk.stderr, new RegExp(`ERROR: +WAL segment ${victim} is missing`));
            const r = await tryBackup(src, ['--parent', parent]);
            assert.notEqual(r.code, 0);
            assert.match(
              r.stderr,
              new RegExp(`ERROR: +WAL segment ${victim} is missing from .*; take a new full backup`),
            );
          } finally {
            renameSync(join(src.scratch, victim), join(src.archivePath, victim));
          }
        },
      );

      row('a', 'pitfall: a period with wal_level = minimal between parent and child is refused', async () => {
        await c.stop();
        c.writeConf({ wal_level: 'minimal', archive_mode: 'off', max_wal_senders: 0 });
        await c.start();
        await c.query(
          "BEGIN; CREATE TABLE bulk (g int, v text); INSERT INTO bulk SELECT g, repeat('b', 100) FROM generate_series(1, 50000) g; COMMIT;",
        );
        await c.stop();
        c.writeConf({ wal_level: 'replica', archive_mode: 'on', max_wal_senders: 10 });
        await c.start();
        await src.archiveCurrentWal();
        const r = await tryBackup(src, ['--parent', parent]);
        assert.notEqual(r.code, 0, 'the incremental is refused');
        assert.match(r.stderr, /ERROR: .*(wal_level = minimal|is missing from).*take a new full backup/);
      });
    });
  }

  // pg_checksums exists only as Debian's PostgreSQL 15 client tool, so this row runs on a 15 cluster.
  row(
    'b',
    'pitfall: data checksums enabled or disabled with pg_checksums between parent and child are refused',
    async () => {
      const src = await createIncrementalSource(15);
      const c = src.cluster;
      const pgChecksums = async (action: '--enable' | '--disable') => {
        await c.stop();
        await runOk(join(DEBIAN_PG15_BIN, 'pg_checksums'), [action, '-D', c.dataDir], { asTestUser: true });
        await c.start();
      };
      try {
        await c.query('CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 20000) g');
        await src.archiveCurrentWal();
        // Checksums on (initdb -k), then turned off: the control file changes, no WAL says so.
        const withChecksums = await takeBackup(src);
        await pgChecksums('--disable');
        await src.archiveCurrentWal();
        let r = await tryBackup(src, ['--parent', withChecksums]);
        assert.notEqual(r.code, 0, 'an incremental over checksums turned off is refused');
        assert.match(
          r.stderr,
          new RegExp(
            `ERROR: +data checksums were turned off since parent backup ${withChecksums} .*take a new full backup`,
          ),
        );
        // Checksums off, then turned on: pg_checksums rewrites every page without WAL.
        const withoutChecksums = await takeBackup(src);
        await pgChecksums('--enable');
        await src.archiveCurrentWal();
        r = await tryBackup(src, ['--parent', withoutChecksums]);
        assert.notEqual(r.code, 0, 'an incremental over checksums turned on is refused');
        assert.match(
          r.stderr,
          new RegExp(
            `ERROR: +data checksums were turned on since parent backup ${withoutChecksums} .*take a new full backup`,
          ),
        );
        r = await tryBackup(src, ['--parent', withoutChecksums, '--check']);
        assert.notEqual(r.code, 0, '--check reports it too');
        // A new full backup is the way on: an incremental on top of it works.
        const fresh = await takeBackup(src);
        await c.query("UPDATE t SET v = v || 'x' WHERE g < 100");
        await src.archiveCurrentWal();
        await takeBackup(src, fresh);
      } finally {
        await src.destroy();
      }
    },
  );
}
