// Test harness: the BACKUP suite of one PostgreSQL version (every format and compression, under writes,
// restored by hand), shared by the backup test files so node's test runner can run versions in parallel.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { createBackupFixture, backupIdFrom, type BackupFixture } from './backup-fixture.js';
import { restoreByHand, removeRestored } from './manual-restore.js';
import { pgbenchInit, tableFingerprints } from './load.js';
import { clientTool, versionsUnderTest } from './pg-binaries.js';
import { makeTempDir, removeTree, run } from './os.js';

/**
 * Pause between the writer's transactions. Unpaced, one connection wrote ~40k rows and ~7 MB of WAL a
 * second: every backup made the table (and the WAL the next backup carries) bigger, so the suite's
 * backups grew to 600 MB and pg_basebackup's single-threaded gzip of the fetched WAL took 140 s. Paced,
 * it still commits hundreds of transactions during every backup, which is all the oracle needs.
 */
const WRITER_PAUSE_MS = 10;

/**
 * The paced writer also switches WAL twice, 1 and 2 s after it starts (the backup has begun and is
 * still copying), so that a backup's WAL still spans several segments (archived, fetched or streamed
 * while it runs), as the unpaced writer's volume made it do. Twice, not periodically: every switch adds
 * a 16 MB segment to the backup, and a slow backup would pile them up (xlog_method = stream took 440 s
 * on PostgreSQL 17 with a switch every 2 s under load).
 */
const WRITER_SWITCHES_MS = [1000, 2000];

/** Inserts rows with consecutive ids in small transactions until stopped: an oracle for "committed before the backup ended". */
async function startInsertWriter(fx: BackupFixture) {
  const client = new pg.Client(fx.cluster.connectionConfig());
  await client.connect();
  await client.query('CREATE TABLE IF NOT EXISTS ins (id bigint PRIMARY KEY, payload text NOT NULL)');
  let next = Number((await client.query('SELECT coalesce(max(id), 0) + 1 AS n FROM ins')).rows[0].n);
  let running = true;
  const started = Date.now();
  const switches = [...WRITER_SWITCHES_MS];
  const loop = (async () => {
    while (running) {
      await client.query('INSERT INTO ins SELECT g, md5(g::text) FROM generate_series($1::bigint, $1::bigint + 49) g', [
        next,
      ]);
      next += 50;
      if (switches.length > 0 && Date.now() - started >= switches[0]!) {
        switches.shift();
        await client.query('SELECT pg_switch_wal()');
      }
      await new Promise((r) => setTimeout(r, WRITER_PAUSE_MS));
    }
  })();
  return {
    committed: () => next - 1,
    async stop() {
      running = false;
      await loop;
      await client.end();
    },
  };
}

const COMBINATIONS: string[][] = [
  ['-F', 't'],
  ['-F', 't', '-z'],
  ['-F', 't', '--compress', 'lz4'],
  ['-F', 't', '--compress', 'zstd', '--thread-count', '1'],
  ['-F', 'p'],
  ['-F', 'p', '--compress', 'zstd'],
];

/** The same, through pg_basebackup: Debian's pg_basebackup is version 15, so for servers up to 15 only. */
const PG_BASEBACKUP_COMBINATIONS: string[][] = [
  ['-F', 't', '-z', '--with-pg_basebackup'],
  ['-F', 'p', '--with-pg_basebackup'],
];

/**
 * The versions under test that backup test file `part` of `parts` runs (every `parts`-th one): each
 * file is one process, so the runner spreads the versions over its workers.
 */
export function backupSuiteVersions(part: number, parts: number): number[] {
  return versionsUnderTest().filter((_, i) => i % parts === part);
}

/** Registers the BACKUP suite for one PostgreSQL version (a describe block with its own fixture). */
export function describeBackupSuite(version: number): void {
  // Tests that do not apply to this version are registered as skipped (with the reason), not left out.
  const noPgBasebackup = version > 15 ? `pg_basebackup_path (15) cannot back up PostgreSQL ${version}` : false;
  const olderOnly = version <= 15 ? `PostgreSQL ${version} is not newer than pg_basebackup_path (15)` : false;
  /** The combinations that run on this version (the backups the later tests count). */
  const combinations = noPgBasebackup ? COMBINATIONS : [...COMBINATIONS, ...PG_BASEBACKUP_COMBINATIONS];
  describe(`BACKUP on PostgreSQL ${version}`, () => {
    let fx: BackupFixture;
    let tsDir: string;
    let static_: Record<string, string>;

    before(async () => {
      // pg_basebackup -X fetch collects the WAL at the end from pg_wal: a timed checkpoint during a
      // slow run (this suite backs up under writes) would recycle it. Its documented requirement:
      // wal_keep_size large enough (the native engine takes WAL from the archive instead).
      fx = await createBackupFixture({ version, serverExtra: { thread_count: '2' }, conf: { wal_keep_size: '1GB' } });
      tsDir = makeTempDir('ts');
      // Scale 1 (13 MB of accounts): the writer, not the size, is what the backups race against; each
      // backup is copied, restored, checked and verified twice, so its size multiplies through the suite.
      await pgbenchInit(fx.cluster, 1);
      await fx.cluster.query(`CREATE TABLESPACE ts1 LOCATION '${tsDir}'`);
      await fx.cluster.query(
        'CREATE TABLE in_ts TABLESPACE ts1 AS SELECT g AS id, repeat(md5(g::text), 20) AS big FROM generate_series(1, 20000) g',
      );
      await fx.cluster.query('CREATE UNLOGGED TABLE scratch AS SELECT g FROM generate_series(1, 10000) g');
      await fx.cluster.query('CREATE EXTENSION IF NOT EXISTS amcheck');
      static_ = await tableFingerprints(fx.cluster);
    });
    after(async () => {
      await fx?.destroy();
      if (tsDir) removeTree(tsDir);
    });

    /** Backs up under writes with `args`, restores by hand, and compares with the source. */
    const backupAndRestoreByHand = async (args: string[]) => {
      const writer = await startInsertWriter(fx);
      await new Promise((r) => setTimeout(r, 200));
      const committedBefore = writer.committed();
      const r = await fx.setup.bart(['BACKUP', '-s', fx.server, ...args]);
      const committedAfter = writer.committed();
      await writer.stop();
      assert.equal(r.code, 0, r.stderr + r.stdout);
      assert.ok(committedAfter > committedBefore, 'the writer committed while the backup ran');
      const id = backupIdFrom(r.stdout);
      assert.match(r.stdout, /backup completed successfully/);
      const dir = fx.backupDir(id);
      assert.ok(existsSync(join(dir, 'manifest.jsonl')));
      assert.ok(
        !readdirSync(join(fx.setup.backupPath, fx.server)).some((n) => n.endsWith('.partial')),
        'no partial backup left',
      );
      if (args[1] === 'p' && !args.includes('--compress')) {
        const v = await run(
          clientTool('pg_verifybackup'),
          version === 15 ? [join(dir, 'base')] : ['-n', join(dir, 'base')],
        );
        assert.equal(v.code, 0, `pg_verifybackup: ${v.stdout}${v.stderr}`);
        // The default file checksum is PostgreSQL's own: pg_verifybackup just compared every file's CRC-32C.
        if (!args.includes('--checksum-algorithm'))
          assert.match(readFileSync(join(dir, 'base', 'backup_manifest'), 'utf8'), /"Checksum-Algorithm": "CRC32C"/);
      }
      const target = join(makeTempDir('restore'), 'data');
      const restored = await restoreByHand(dir, version, target);
      try {
        const now = await tableFingerprints(restored);
        for (const [table, fp] of Object.entries(static_))
          assert.equal(now[table], fp, `table ${table} differs after restore`);
        const rows = await restored.query<{ n: string; max: string; bad: string }>(
          'SELECT count(*) AS n, coalesce(max(id), 0) AS max, count(*) FILTER (WHERE payload <> md5(id::text)) AS bad FROM ins',
        );
        const { n, max, bad } = rows[0]!;
        assert.equal(bad, '0');
        assert.equal(n, max, 'rows committed during the backup form a gap-free prefix');
        assert.ok(
          Number(max) >= committedBefore,
          `restored ${max} rows, ${committedBefore} were committed before the backup started`,
        );
        assert.equal(await restored.scalar('SELECT count(*) FROM scratch'), '0', 'unlogged table exists and is empty');
        const check = await run(clientTool('pg_amcheck'), [
          '-h',
          restored.host,
          '-p',
          String(restored.port),
          '-U',
          'postgres',
          '--heapallindexed',
          'postgres',
        ]);
        assert.equal(check.code, 0, `pg_amcheck: ${check.stdout}${check.stderr}`);
      } finally {
        await restored.destroy();
        removeRestored(target);
        removeTree(join(target, '..'));
      }
    };

    for (const args of [...COMBINATIONS, ...PG_BASEBACKUP_COMBINATIONS]) {
      const skip = PG_BASEBACKUP_COMBINATIONS.includes(args) ? noPgBasebackup : false;
      const name = `${args.join(' ')}: a hot backup taken under writes restores by hand to the data it held`;
      test(name, { skip }, () => backupAndRestoreByHand(args));
    }

    test('xlog_method = stream: the WAL received over replication makes the backup consistent on its own', async () => {
      const cfg = readFileSync(fx.setup.configPath, 'utf8');
      fx.setup.writeConfig(cfg.replace(/^(\[pg\])$/m, '$1\nxlog_method = stream'));
      try {
        await backupAndRestoreByHand(['-F', 't', '--compress', 'lz4']);
      } finally {
        fx.setup.writeConfig(cfg);
      }
    });

    const refusesNewer = '--with-pg_basebackup refuses a server newer than pg_basebackup_path, naming both versions';
    test(refusesNewer, { skip: olderOnly }, async () => {
      const r = await fx.setup.bart(['BACKUP', '-s', fx.server, '--with-pg_basebackup']);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, new RegExp(`pg_basebackup 15 .* cannot back up PostgreSQL ${version}`));
    });

    test('SHOW-BACKUPS lists every backup; VERIFY-CHKSUM passes, then catches one flipped byte', async () => {
      const list = await fx.setup.bart(['SHOW-BACKUPS', '-s', fx.server]);
      assert.equal(list.code, 0, list.stderr);
      const ids = readdirSync(join(fx.setup.backupPath, fx.server)).filter((n) => /^\d+$/.test(n));
      assert.equal(ids.length, combinations.length + 1);
      for (const id of ids) assert.match(list.stdout, new RegExp(`${id}\\s+none\\s+none.*active`));
      const json = JSON.parse((await fx.setup.bart(['SHOW-BACKUPS', '-s', fx.server, '--output', 'json'])).stdout) as {
        id: string;
        status: string;
      }[];
      assert.deepEqual(json.map((b) => b.id).sort(), ids.sort());
      // BART's list format, under its short and long option names.
      for (const flag of ['-t', '--toggle']) {
        const detail = await fx.setup.bart(['show-backups', '-s', fx.server, '-i', ids[0]!, flag]);
        assert.equal(detail.code, 0, detail.stderr);
        assert.match(detail.stdout, new RegExp(`^BACKUP ID\\s*: ${ids[0]}$`, 'm'));
        assert.match(detail.stdout, /^BACKUP STATUS\s*: active$/m);
        assert.match(detail.stdout, /^FIRST WAL FILE\s*: [0-9A-F]{24}$/m);
        assert.equal((detail.stdout.match(/^SERVER NAME/gm) ?? []).length, 1, 'only the backup asked for');
      }
      const ok = await fx.setup.bart(['VERIFY-CHKSUM', '-s', fx.server]);
      assert.equal(ok.code, 0, ok.stdout + ok.stderr);
      assert.equal((ok.stdout.match(/ OK/g) ?? []).length, combinations.length + 1);

      // Flip one byte in the middle of a data file of a plain backup and of an uncompressed tar.
      const plain = ids.find((id) =>
        /BACKUP FORMAT: plain\n[\s\S]*COMPRESSION: none\n[\s\S]*ENGINE: native/.test(
          readFileSync(join(fx.backupDir(id), 'backupinfo'), 'utf8'),
        ),
      )!;
      const tarId = ids.find((id) => existsSync(join(fx.backupDir(id), 'base.tar')))!;
      const flip = async (path: string, at: number) => {
        const { openSync, readSync, writeSync, closeSync } = await import('node:fs');
        const fd = openSync(path, 'r+');
        const b = Buffer.alloc(1);
        readSync(fd, b, 0, 1, at);
        b[0] = b[0]! ^ 0xff; // always a different byte
        writeSync(fd, b, 0, 1, at);
        closeSync(fd);
      };
      const accounts = (
        await fx.cluster.query<{ p: string }>("SELECT pg_relation_filepath('pgbench_accounts') AS p")
      )[0]!.p;
      await flip(join(fx.backupDir(plain), 'base', accounts), 8192 * 3 + 100);
      const tarPath = join(fx.backupDir(tarId), 'base.tar');
      await flip(tarPath, Math.floor(readFileSync(join(fx.backupDir(tarId), 'manifest.jsonl'), 'utf8').length)); // lands in file data
      const bad = await fx.setup.bart(['VERIFY-CHKSUM', '-s', fx.server]);
      assert.notEqual(bad.code, 0);
      assert.match(bad.stdout, new RegExp(`${plain}\\s+FAILED \\(base/${accounts}: checksum mismatch`));
      assert.match(bad.stdout, new RegExp(`${tarId}\\s+FAILED`));
      assert.equal((bad.stdout.match(/ OK/g) ?? []).length, combinations.length + 1 - 2);
    });

    const failing =
      '--with-pg_basebackup: when pg_basebackup fails, the error shows its error line, not its last words';
    test(failing, { skip: noPgBasebackup }, async () => {
      // The real pg_basebackup, told to stream WAL from a slot that does not exist: it fails once the
      // copy has begun, prints its error, then "removing data directory ...".
      const wrapper = join(fx.cluster.baseDir, 'pg_basebackup-no-slot');
      const script = `#!/bin/sh\nexec ${clientTool('pg_basebackup')} "$@" -X stream -S pgbart_no_such_slot\n`;
      writeFileSync(wrapper, script, { mode: 0o755 });
      const cfg = readFileSync(fx.setup.configPath, 'utf8');
      fx.setup.writeConfig(cfg.replace(/^pg_basebackup_path = .*$/m, `pg_basebackup_path = ${wrapper}`));
      try {
        const backupIds = () => readdirSync(join(fx.setup.backupPath, fx.server)).filter((n) => /^\d+$/.test(n));
        const before_ = backupIds();
        const r = await fx.setup.bart(['BACKUP', '-s', fx.server, '--with-pg_basebackup']);
        assert.notEqual(r.code, 0);
        assert.match(r.stderr, /ERROR: +pg_basebackup failed \(exit 1\): pg_basebackup: error: .*pgbart_no_such_slot/);
        assert.deepEqual(backupIds(), before_, 'no backup looks complete');
      } finally {
        fx.setup.writeConfig(cfg);
      }
    });
  });
}
