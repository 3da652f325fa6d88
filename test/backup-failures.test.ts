import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chownSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createBackupFixture, type BackupFixture } from './harness/backup-fixture.js';
import { pgbenchInit } from './harness/load.js';
import { versionsUnderTest } from './harness/pg-binaries.js';
import { makeTempDir, removeTree, run, runOk, testUserIds } from './harness/os.js';
import { waitFor } from './harness/wait.js';

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
