import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chownSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { createBackupFixture, backupIdFrom, type BackupFixture } from './harness/backup-fixture.js';
import { restoreByHand, removeRestored } from './harness/manual-restore.js';
import { pgbenchInit, tableFingerprints } from './harness/load.js';
import { clientTool, versionsUnderTest } from './harness/pg-binaries.js';
import { makeTempDir, removeTree, run, runOk, testUserIds } from './harness/os.js';
import { waitFor } from './harness/wait.js';

/** Inserts rows with consecutive ids in small transactions until stopped: an oracle for "committed before the backup ended". */
async function startInsertWriter(fx: BackupFixture) {
  const client = new pg.Client(fx.cluster.connectionConfig());
  await client.connect();
  await client.query('CREATE TABLE IF NOT EXISTS ins (id bigint PRIMARY KEY, payload text NOT NULL)');
  let next = Number((await client.query('SELECT coalesce(max(id), 0) + 1 AS n FROM ins')).rows[0].n);
  let running = true;
  const loop = (async () => {
    while (running) {
      await client.query('INSERT INTO ins SELECT g, md5(g::text) FROM generate_series($1::bigint, $1::bigint + 49) g', [
        next,
      ]);
      next += 50;
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

for (const version of versionsUnderTest()) {
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
      await pgbenchInit(fx.cluster, 3);
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
      await writer.stop();
      assert.equal(r.code, 0, r.stderr + r.stdout);
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

describe('BACKUP failures leave no valid-looking backup', () => {
  const version = versionsUnderTest()[0]!;
  let fx: BackupFixture;
  before(async () => {
    fx = await createBackupFixture({ version });
    await pgbenchInit(fx.cluster, 1);
    // 200 MB that no compressor can shrink: makes the kill window wide and the disk-full case real.
    const noise = join(fx.cluster.baseDir, 'noise.bin');
    await runOk('dd', ['if=/dev/urandom', `of=${noise}`, 'bs=1M', 'count=200', 'status=none']);
    await fx.cluster.query('CREATE TABLE noise (b bytea)');
    await fx.cluster.query('ALTER TABLE noise ALTER COLUMN b SET STORAGE EXTERNAL');
    await fx.cluster.query(
      `INSERT INTO noise SELECT pg_read_binary_file('${noise}', i * 1048576, 1048576) FROM generate_series(0, 199) i`,
    );
  });
  after(async () => fx?.destroy());

  test('duplicate --backup-name is refused; names are unique per server', async () => {
    const first = await fx.setup.bart(['BACKUP', '-s', fx.server, '--backup-name', 'nightly_%year']);
    assert.equal(first.code, 0, first.stderr);
    const second = await fx.setup.bart(['BACKUP', '-s', fx.server, '--backup-name', 'nightly_%year']);
    assert.notEqual(second.code, 0);
    assert.match(second.stderr, /ERROR: .*backup name "nightly_\d{4}" is already used/);
    const show = await fx.setup.bart(['SHOW-BACKUPS', '-s', fx.server, '-i', `nightly_${new Date().getFullYear()}`]);
    assert.equal(show.code, 0);
  });

  test('kill -9 in the middle of a backup: nothing looks valid, and the next BACKUP works', async () => {
    const { spawn } = await import('node:child_process');
    const { REPO_ROOT } = await import('./harness/pg-binaries.js');
    const child = spawn(
      process.execPath,
      [
        join(REPO_ROOT, 'bin', 'bart.js'),
        '-c',
        fx.setup.configPath,
        'BACKUP',
        '-s',
        fx.server,
        '-z',
        '-c',
        '9',
        '--thread-count',
        '1',
      ],
      { stdio: 'ignore' },
    );
    // Kill it while it copies, as seen on disk (not after a guessed delay): once the partial backup's
    // base.tar.gz holds 4 MiB, the copy has begun, and it is far from done (the 200 MB of random data
    // above do not compress).
    const serverDir = join(fx.setup.backupPath, fx.server);
    const copying = (): string | undefined => {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`BACKUP ended (${child.exitCode ?? child.signalCode}) before it could be killed mid-copy`);
      }
      const dir = readdirSync(serverDir).find((n) => n.endsWith('.partial'));
      if (dir === undefined) return undefined;
      const tar = statSync(join(serverDir, dir, 'base.tar.gz'), { throwIfNoEntry: false });
      return tar !== undefined && tar.size >= 4 * 1024 * 1024 ? dir : undefined;
    };
    const copyingDir = await waitFor('BACKUP to write 4 MiB of base.tar.gz', copying, {
      timeoutMs: 120_000,
      intervalMs: 10,
    });
    child.kill('SIGKILL');
    await new Promise((r) => child.on('exit', r));
    const partial = readdirSync(serverDir).find((n) => n.endsWith('.partial'));
    assert.equal(partial, copyingDir, 'the killed backup was still in progress');
    const show = await fx.setup.bart(['SHOW-BACKUPS', '-s', fx.server]);
    assert.match(show.stdout, new RegExp(`${partial!.replace('.partial', '')}.*failed`));
    const restoreCandidates = JSON.parse(
      (await fx.setup.bart(['SHOW-BACKUPS', '-s', fx.server, '--output', 'json'])).stdout,
    ) as { id: string; status: string }[];
    assert.equal(restoreCandidates.find((b) => partial!.startsWith(b.id))?.status, 'failed');
    // The server is not stuck in backup mode and the stale lock is taken over.
    const next = await fx.setup.bart(['BACKUP', '-s', fx.server]);
    assert.equal(next.code, 0, next.stderr);
  });

  test('a stopped server: clear error, nothing written', async () => {
    await fx.cluster.stop();
    try {
      const before_ = readdirSync(join(fx.setup.backupPath, fx.server)).filter((n) => !n.endsWith('.partial'));
      const r = await fx.setup.bart(['BACKUP', '-s', fx.server]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /ERROR: +cannot connect to PostgreSQL server 127\.0\.0\.1:\d+/);
      assert.deepEqual(
        readdirSync(join(fx.setup.backupPath, fx.server)).filter((n) => !n.endsWith('.partial')),
        before_,
      );
    } finally {
      await fx.cluster.start();
    }
  });

  test('a full disk: refused up front when clearly too small, cleaned up when it fills during the copy', async () => {
    if (!testUserIds()) throw new Error('this test mounts tmpfs and must run as root');
    const mnt = makeTempDir('tmpfs');
    const backupPath = join(mnt, 'catalog');
    const archive = join(fx.setup.backupPath, fx.server, 'archived_wals');
    const cfg = readFileSync(fx.setup.configPath, 'utf8');
    await runOk('mount', ['-t', 'tmpfs', '-o', 'size=20m', 'tmpfs', mnt], { asTestUser: false });
    try {
      mkdirSync(backupPath);
      const ids = testUserIds()!;
      chownSync(mnt, ids.uid, ids.gid);
      chownSync(backupPath, ids.uid, ids.gid);
      fx.setup.writeConfig(
        cfg
          .replace(/^backup_path = .*$/m, `backup_path = ${backupPath}`)
          .replace(/^(\[pg\])$/m, `$1\narchive_path = ${archive}`),
      );
      const tooSmall = await fx.setup.bart(['BACKUP', '-s', fx.server]);
      assert.notEqual(tooSmall.code, 0);
      assert.match(tooSmall.stderr, /not enough free space in .*catalog/);
      // With lz4 the up-front estimate passes (compressed data is assumed to halve), but the random data does not compress.
      await runOk('umount', [mnt], { asTestUser: false });
      await runOk('mount', ['-t', 'tmpfs', '-o', 'size=190m', 'tmpfs', mnt], { asTestUser: false });
      mkdirSync(backupPath);
      chownSync(mnt, ids.uid, ids.gid);
      chownSync(backupPath, ids.uid, ids.gid);
      const full = await fx.setup.bart(['BACKUP', '-s', fx.server, '--compress', 'lz4']);
      assert.notEqual(full.code, 0, full.stdout);
      assert.match(full.stderr, /no space left on device/);
      const left = existsSync(join(backupPath, fx.server))
        ? readdirSync(join(backupPath, fx.server)).filter((n) => !n.endsWith('.lock'))
        : [];
      assert.deepEqual(left, [], 'nothing of the failed backup is left');
    } finally {
      fx.setup.writeConfig(cfg);
      await run('umount', [mnt], { asTestUser: false });
      removeTree(mnt);
    }
  });
});
