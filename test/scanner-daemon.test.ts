/**
 * End-to-end: bart-scanner --daemon on a live cluster of every version under test. WAL archived
 * during a workload gets MBMs within seconds; the blocks the workload touched are in them;
 * RELOAD, STOP and kill -9 followed by a restart lose nothing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, chownSync, readdirSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { withCluster, type TestCluster } from './harness/cluster.js';
import { versionsUnderTest } from './harness/pg-binaries.js';
import { createBartSetup, serverSection } from './harness/bart.js';
import { testUserIds } from './harness/os.js';
import { loadChangeSet, isBlockModified, type ChangeSet } from '../src/scanner/change-set.js';
import { isScannerRunning, requestMbms } from '../src/scanner/client.js';
import { loadConfig } from '../src/config/parse-config.js';
import { forkKey } from '../src/scanner/modified-block-map.js';
import { parseLsn, type Lsn } from '../src/util/lsn.js';
import { parseMbmFileName } from '../src/scanner/mbm-name.js';
import { archiveCommand, runVariedWorkload } from './harness/wal-workload.js';
import { waitFor } from './harness/wait.js';
import { bartScanner, killScanner, scannerPid } from './harness/scanner.js';

interface RelInfo {
  spc: number;
  db: number;
  rel: number;
}

async function relInfo(c: TestCluster, table: string): Promise<RelInfo> {
  const r = await c.query<{ spc: string; db: string; rel: string }>(
    `SELECT CASE WHEN c.reltablespace = 0 THEN d.dattablespace ELSE c.reltablespace END::text AS spc, d.oid::text AS db, pg_relation_filenode(c.oid)::text AS rel
       FROM pg_class c, pg_database d WHERE c.oid = $1::regclass AND d.datname = current_database()`,
    [table],
  );
  return { spc: Number(r[0]!.spc), db: Number(r[0]!.db), rel: Number(r[0]!.rel) };
}

async function blocksOf(c: TestCluster, where: string): Promise<number[]> {
  const r = await c.query<{ b: number }>(
    `SELECT DISTINCT (ctid::text::point)[0]::int AS b FROM e2e_t WHERE ${where} ORDER BY 1`,
  );
  return r.map((x) => x.b);
}

async function insertLsn(c: TestCluster): Promise<Lsn> {
  return parseLsn(String(await c.scalar('SELECT pg_current_wal_insert_lsn()::text')));
}

/** Waits until the MBMs of [start, end) are complete, returns the merged change set. */
async function waitChangeSet(archive: string, start: Lsn, end: Lsn, timeoutMs: number): Promise<ChangeSet> {
  let cs: ChangeSet | undefined;
  await waitFor(
    `MBMs covering ${start.toString(16)}..${end.toString(16)}`,
    async () => {
      cs = await loadChangeSet(archive, { timeline: 1, startLsn: start, endLsn: end });
      return cs.missingSegments.length === 0;
    },
    { timeoutMs, details: () => `missing: ${cs?.missingSegments.join(', ')}` },
  );
  return cs!;
}

/** Updates rows, returning the blocks touched (old and new tuple versions) and the LSN range. */
async function touchRows(
  c: TestCluster,
  mod: number,
  value: string,
): Promise<{ blocks: number[]; start: Lsn; end: Lsn }> {
  await c.switchWal();
  const start = await insertLsn(c);
  const before = await blocksOf(c, `id % ${mod} = 0`);
  await c.query(`UPDATE e2e_t SET pad = '${value}' WHERE id % ${mod} = 0`);
  const after = await blocksOf(c, `id % ${mod} = 0`);
  const end = await insertLsn(c);
  await c.switchWal();
  return { blocks: [...new Set([...before, ...after])], start, end };
}

function assertBlocks(cs: ChangeSet, rel: RelInfo, blocks: number[], what: string): void {
  const f = cs.relations.get(forkKey(rel.spc, rel.db, rel.rel, 0));
  assert.ok(f, `${what}: relation ${rel.spc}/${rel.db}/${rel.rel} is in the change set`);
  assert.equal(f.limit, null, `${what}: no limit (the relation was neither created nor truncated in the range)`);
  for (const b of blocks)
    assert.ok(isBlockModified(cs, rel.spc, rel.db, rel.rel, 0, b), `${what}: block ${b} is marked modified`);
  // Blocks never touched must not be reported, or the test would prove nothing.
  const listed = f.blocks.length;
  assert.ok(
    listed <= blocks.length + 5,
    `${what}: only touched blocks are listed (${listed} listed, ${blocks.length} touched)`,
  );
}

for (const version of versionsUnderTest()) {
  test(`bart-scanner daemon: PostgreSQL ${version} WAL gets complete MBMs; RELOAD, STOP, kill -9 + restart lose nothing`, async () => {
    const setup = createBartSetup();
    const server = `pg${version}`;
    const archive = join(setup.backupPath, server, 'archived_wals');
    mkdirSync(archive, { recursive: true });
    const ids = testUserIds();
    if (ids)
      for (const d of [setup.backupPath, join(setup.backupPath, server), archive]) chownSync(d, ids.uid, ids.gid);
    try {
      await withCluster(
        {
          version,
          conf: { archive_mode: 'on', archive_command: archiveCommand(archive), max_prepared_transactions: 5 },
        },
        async (c) => {
          const section = serverSection(c, server, {
            allow_incremental_backups: 'enabled',
            archive_path: archive,
            scan_interval: '5',
          });
          setup.writeConfig(readFileSync(setup.configPath, 'utf8') + '\n' + section);
          const started = await bartScanner(setup.configPath, ['--daemon']);
          assert.equal(started.code, 0, started.stderr + started.stdout);
          assert.match(started.stdout, /started/);
          const again = await bartScanner(setup.configPath, ['--daemon']);
          assert.notEqual(again.code, 0, 'a second scanner is refused');
          assert.match(again.stderr, /already running/);

          // CHECK-CONFIG sees the scanner.
          const check = await setup.bart(['CHECK-CONFIG', '-s', server]);
          assert.match(
            check.stdout,
            /bart-scanner is configured and running: success \(pid \d+\)/,
            check.stdout + check.stderr,
          );

          // Varied workload on every version: every segment must decode (no scan errors).
          const wlStart = await insertLsn(c);
          await runVariedWorkload(c, join(setup.dir, 'ts'));
          await c.query(`CREATE TABLE e2e_t (id int, pad text) WITH (fillfactor = 50)`);
          await c.query(`INSERT INTO e2e_t SELECT g, repeat('p', 100) FROM generate_series(1, 20000) g`);
          // Set hint bits and the visibility map now, so later updates touch only their own pages.
          await c.query(`VACUUM (FREEZE) e2e_t`);
          await c.query(`CHECKPOINT`);
          const wlEnd = await insertLsn(c);
          await c.switchWal();
          const wl = await waitChangeSet(archive, wlStart, wlEnd, 30_000);
          const kinds = new Set(wl.events.map((e) => e.kind));
          for (const k of [
            'database-create',
            'database-drop',
            'tablespace-create',
            'tablespace-drop',
            'relation-drop',
            'full-page-writes-change',
          ])
            assert.ok(kinds.has(k as never), `event ${k} recorded`);
          assert.equal(wl.fullPageWritesOff, true, 'full_page_writes = off in the range is reported');
          assert.equal(wl.walLevelMinimal, false);
          const newRel = await relInfo(c, 'e2e_t');
          const nf = wl.relations.get(forkKey(newRel.spc, newRel.db, newRel.rel, 0));
          assert.equal(nf?.limit, 0, 'a table created in the range has limit 0');

          const rel = await relInfo(c, 'e2e_t');
          const a = await touchRows(c, 97, 'a');
          const csA = await waitChangeSet(archive, a.start, a.end, 30_000);
          assertBlocks(csA, rel, a.blocks, 'first update');

          // RELOAD re-reads the configuration and keeps scanning.
          const reload = await bartScanner(setup.configPath, ['RELOAD']);
          assert.equal(reload.code, 0, reload.stderr);
          const b = await touchRows(c, 89, 'b');
          assertBlocks(await waitChangeSet(archive, b.start, b.end, 15_000), rel, b.blocks, 'after RELOAD');

          // kill -9: WAL archived while the scanner is dead is scanned at restart (backlog).
          const pid = scannerPid(setup.dir);
          assert.ok(pid, 'pid file names a live process');
          process.kill(pid, 'SIGKILL');
          await waitFor('scanner death', () => scannerPid(setup.dir) === undefined, { timeoutMs: 10_000 });
          const k = await touchRows(c, 83, 'k');
          const last = await c.switchWal();
          await waitFor(`archiving of ${last}`, () => existsSync(join(archive, last)), { timeoutMs: 30_000 });
          const before = await loadChangeSet(archive, { timeline: 1, startLsn: k.start, endLsn: k.end });
          assert.ok(before.missingSegments.length > 0, 'nothing scans while the scanner is dead');
          const restarted = await bartScanner(setup.configPath, ['--daemon']);
          assert.equal(restarted.code, 0, restarted.stderr + restarted.stdout);
          assertBlocks(
            await waitChangeSet(archive, k.start, k.end, 15_000),
            rel,
            k.blocks,
            'after kill -9 and restart',
          );

          // The client API: the daemon answers, and waits for WAL that has not arrived yet.
          const config = loadConfig(setup.configPath);
          const srv = config.servers.find((x) => x.name === server)!;
          assert.equal((await isScannerRunning(config)).running, true);
          const p0 = await insertLsn(c);
          await c.query(`UPDATE e2e_t SET pad = 'w' WHERE id % 79 = 0`);
          const p1 = await insertLsn(c);
          const pending = requestMbms(config, srv, { timeline: 1, startLsn: p0, endLsn: p1 }, 20);
          await new Promise((r) => setTimeout(r, 1000));
          await c.switchWal();
          const answer = await pending;
          assert.equal(answer.scannerRunning, true);
          assert.equal(answer.complete, true, JSON.stringify(answer));
          assert.equal(
            (await loadChangeSet(archive, { timeline: 1, startLsn: p0, endLsn: p1 })).missingSegments.length,
            0,
          );
          const timedOut = await requestMbms(
            config,
            srv,
            { timeline: 1, startLsn: p1, endLsn: p1 + 64n * 1024n * 1024n },
            1,
          );
          assert.equal(timedOut.complete, false, 'WAL that never arrives is reported missing after the timeout');
          assert.ok(timedOut.missingWal.length > 0);

          // -p prints an MBM, as text and as JSON.
          const mbm = readdirSync(archive)
            .filter((n) => parseMbmFileName(n))
            .sort()
            .pop()!;
          const printed = await bartScanner(setup.configPath, ['-p', join(archive, mbm), '--output', 'json']);
          assert.equal(printed.code, 0, printed.stderr);
          const j = JSON.parse(printed.stdout) as Record<string, unknown>;
          assert.deepEqual(Object.keys(j), ['timeline', 'startLsn', 'endLsn', 'relations', 'events']);
          const text = await bartScanner(setup.configPath, ['-p', join(archive, mbm)]);
          assert.match(text.stdout, /TIMELINE\s+: 1/);

          // STOP: the daemon ends, removes its pid file and socket.
          const stop = await bartScanner(setup.configPath, ['STOP']);
          assert.equal(stop.code, 0, stop.stderr);
          assert.equal(scannerPid(setup.dir), undefined);
          assert.equal(existsSync(join(setup.dir, 'bart_scanner.sock')), false);
          assert.equal((await isScannerRunning(config)).running, false);
          const check2 = await setup.bart(['CHECK-CONFIG', '-s', server]);
          assert.match(
            check2.stderr,
            /bart-scanner is configured and running: bart-scanner is not running .*bart-scanner --daemon/,
          );
          // Without a scanner, requestMbms scans on the spot.
          const q0 = await insertLsn(c);
          await c.query(`UPDATE e2e_t SET pad = 'q' WHERE id % 73 = 0`);
          const q1 = await insertLsn(c);
          const lastSeg = await c.switchWal();
          await waitFor(`archiving of ${lastSeg}`, () => existsSync(join(archive, lastSeg)), { timeoutMs: 30_000 });
          const local = await requestMbms(config, srv, { timeline: 1, startLsn: q0, endLsn: q1 }, 5);
          assert.equal(local.scannerRunning, false);
          assert.equal(local.complete, true, JSON.stringify(local));
          assert.ok(local.written.length > 0);
          const log = readFileSync(join(setup.dir, 'bart_scanner.log'), 'utf8');
          assert.match(log, /RELOAD/);
          assert.doesNotMatch(log, /no MBM for/, 'no segment failed to scan');
        },
      );
    } finally {
      killScanner(setup.dir);
      setup.cleanup();
    }
  });
}
