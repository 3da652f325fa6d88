import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  existsSync,
  lstatSync,
  readdirSync,
  mkdirSync,
  chownSync,
  readFileSync,
  readlinkSync,
  statSync,
  writeFileSync,
  openSync,
  readSync,
  writeSync,
  closeSync,
} from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { REPO_ROOT, versionsUnderTest } from './harness/pg-binaries.js';
import { pgbenchInit, startWriter, tableFingerprints } from './harness/load.js';
import { removeTree, runOk, testUserIds } from './harness/os.js';
import {
  createRestoreSource,
  freshPath,
  snapshot,
  startRestored,
  waitPromoted,
  type RestoreSource,
} from './harness/restore.js';

for (const version of versionsUnderTest()) {
  describe(`RESTORE on PostgreSQL ${version}`, () => {
    let src: RestoreSource;
    let tsOid: number;
    let atBackups: Record<string, string>;
    const backups: { label: string; id: string }[] = [];

    before(async () => {
      src = await createRestoreSource(version);
      const c = src.cluster;
      // A tablespace, so every restore has to map it (its original location is in use by the source).
      const tsDir = freshPath(src, 'ts-orig');
      mkdirSync(tsDir, { mode: 0o700 });
      const ids = testUserIds();
      if (ids) chownSync(tsDir, ids.uid, ids.gid);
      await c.query(`CREATE TABLESPACE ts1 LOCATION '${tsDir}'`);
      tsOid = Number(await c.scalar(`SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'`));
      await pgbenchInit(c, 1);
      await c.query(
        `CREATE TABLE in_ts (id int PRIMARY KEY, t text) TABLESPACE ts1; INSERT INTO in_ts SELECT g, md5(g::text) FROM generate_series(1, 20000) g`,
      );
      await c.query(
        `CREATE TABLE big (id int, payload text); INSERT INTO big SELECT g, repeat(md5(g::text), 20) FROM generate_series(1, 30000) g`,
      );
      await c.query('CHECKPOINT');
      atBackups = await tableFingerprints(c);
      for (const [label, args] of [
        ['tar', ['-F', 't']],
        ['tar-gzip', ['-F', 't', '--compress', 'gzip']],
        ['tar-lz4', ['-F', 't', '--compress', 'lz4']],
        ['tar-zstd', ['-F', 't', '--compress', 'zstd']],
        ['plain', ['-F', 'p']],
        ['plain-zstd', ['-F', 'p', '--compress', 'zstd']],
      ] as const) {
        backups.push({ label, id: await src.backup([...args]) });
      }
      // pg_basebackup's tars have no unit offsets: restored sequentially (bart.cfg's pg_basebackup is version 15).
      if (version === 15)
        backups.push({
          label: 'pg_basebackup-tar-gzip',
          id: await src.backup(['-F', 't', '-z', '--with-pg_basebackup']),
        });
      await src.archiveCurrentWal();
    });

    after(async () => {
      await src?.destroy();
    });

    test('every format and compression restores: to the backup end (--target-immediate) or to the end of the archive, with -c or ARCHIVE-GET', async () => {
      // Writes after the backups: a restore without a target must replay them from the archive.
      const c = src.cluster;
      const writer = await startWriter(c);
      await new Promise((r) => setTimeout(r, 500));
      await writer.stop();
      await c.query('UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 13 = 0');
      const atEnd = await tableFingerprints(c);
      await src.archiveCurrentWal();
      const plans: Record<string, { toEnd: boolean; copy: boolean; standby?: boolean }> = {
        tar: { toEnd: false, copy: false },
        'tar-gzip': { toEnd: true, copy: false },
        'tar-lz4': { toEnd: false, copy: true },
        'tar-zstd': { toEnd: false, copy: false },
        plain: { toEnd: true, copy: false, standby: true },
        'plain-zstd': { toEnd: true, copy: true },
        'pg_basebackup-tar-gzip': { toEnd: false, copy: false },
      };
      for (const [i, b] of backups.entries()) {
        const { toEnd, copy, standby } = plans[b.label]!;
        const path = freshPath(src, `data-${b.label}`);
        const tsPath = freshPath(src, `ts-${b.label}`);
        const args = ['-i', b.id, '-p', path, '-w', i % 2 === 0 ? '2' : '1', '--tablespace-map', `${tsOid}=${tsPath}`];
        if (!toEnd) args.push('--target-immediate', '--target-action', 'promote');
        if (copy) args.push('-c');
        if (standby) args.push('--standby');
        const r = await src.restore(args);
        assert.equal(r.code, 0, `${b.label}: ${r.stdout}\n${r.stderr}`);
        assert.match(r.stdout, /restore complete; start the restored server with: \S*pg_ctl -D \S+ start/);
        assert.match(r.stdout, /archive_mode is turned off/);
        assert.equal(statSync(path).mode & 0o777, 0o700, 'data directory mode 0700');
        const link = join(path, 'pg_tblspc', String(tsOid));
        assert.ok(lstatSync(link).isSymbolicLink());
        assert.equal(readlinkSync(link), tsPath);
        assert.ok(
          readdirSync(tsPath).some((n) => n.startsWith(`PG_${version}_`)),
          'tablespace content at the mapped location',
        );
        assert.equal(existsSync(join(path, 'tablespace_map')), false);
        assert.equal(existsSync(join(path, '.pgbart-restore-incomplete')), false);
        assert.equal(existsSync(join(path, 'recovery.signal')), !standby);
        assert.equal(existsSync(join(path, 'standby.signal')), standby === true);
        const auto = readFileSync(join(path, 'postgresql.auto.conf'), 'utf8');
        assert.match(auto, /^archive_mode = 'off'$/m);
        assert.match(auto, toEnd ? /^recovery_target = ''$/m : /^recovery_target = 'immediate'$/m);
        if (copy) {
          assert.match(auto, /^restore_command = 'cp ''.*archived_wals''\/%f %p'$/m);
          const copied = readdirSync(join(path, 'archived_wals'));
          assert.ok(
            copied.length >= 2 && copied.every((n) => /^0000000[1-9]/.test(n)),
            `copied WAL: ${copied.join(' ')}`,
          );
        } else {
          // A plain archived segment is copied by sh; anything else is ARCHIVE-GET's.
          assert.match(
            auto,
            /^restore_command = '\[ -f ''[^']*archived_wals''\/%f \] && \[ ! -L ''[^']*archived_wals''\/%f \] && cp -- ''[^']*archived_wals''\/%f %p \|\| .*bart\.js'' -c ''.*bart\.cfg'' ARCHIVE-GET -s ''src'' %f %p'$/m,
          );
        }
        const restored = await startRestored(version, path);
        try {
          if (standby) {
            // A standby replays the archive and stays in recovery, polling for more WAL.
            const deadline = Date.now() + 60_000;
            while (JSON.stringify(await tableFingerprints(restored)) !== JSON.stringify(atEnd) && Date.now() < deadline)
              await new Promise((res) => setTimeout(res, 300));
            assert.equal(await restored.scalar('SELECT pg_is_in_recovery()'), true, 'a standby stays in recovery');
          } else {
            await waitPromoted(restored);
          }
          assert.deepEqual(
            await tableFingerprints(restored),
            toEnd ? atEnd : atBackups,
            `${b.label}: restored data differs from the source`,
          );
        } finally {
          await restored.destroy();
          removeTree(path);
          removeTree(tsPath);
        }
      }
    });

    test('refusals leave PATH as it was: non-empty PATH, unknown backup, bad options', async () => {
      const nonEmpty = freshPath(src, 'nonempty');
      mkdirSync(nonEmpty);
      writeFileSync(join(nonEmpty, 'keep.txt'), 'precious');
      const before = snapshot(nonEmpty);
      const tsPath = freshPath(src, 'ts-refused');
      let r = await src.restore(['-p', nonEmpty, '--tablespace-map', `${tsOid}=${tsPath}`]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /ERROR: +.*is not empty.*keep\.txt/);
      assert.deepEqual(snapshot(nonEmpty), before);
      assert.equal(existsSync(tsPath), false);

      const absent = freshPath(src, 'absent');
      r = await src.restore(['-p', absent, '-i', '1234567', '--tablespace-map', `${tsOid}=${tsPath}`]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /ERROR: +backup "1234567" not found for server src/);
      assert.equal(existsSync(absent), false);

      r = await src.restore(['-p', absent, '-x', '1000', '--target-lsn', '0/1000000']);
      assert.match(r.stderr, /ERROR: +choose one recovery target/);
      r = await src.restore(['-p', absent, '--target-exclusive']);
      assert.match(r.stderr, /ERROR: +--target-exclusive needs/);
      r = await src.restore(['-p', absent, '--tablespace-map', '99999=/tmp/x']);
      assert.match(r.stderr, /ERROR: +--tablespace-map names OID 99999/);
      // The original tablespace location is the live source's: not empty.
      r = await src.restore(['-p', absent]);
      assert.match(r.stderr, /ERROR: +tablespace ts1 .* is not empty/);
      assert.equal(existsSync(absent), false);
    });

    test('not enough free space is refused before anything is written', async () => {
      const mnt = freshPath(src, 'small-fs');
      mkdirSync(mnt);
      const ids = testUserIds();
      await runOk(
        'mount',
        ['-t', 'tmpfs', '-o', `size=5m,mode=0700${ids ? `,uid=${ids.uid},gid=${ids.gid}` : ''}`, 'tmpfs', mnt],
        { asTestUser: false },
      );
      try {
        const tsPath = freshPath(src, 'ts-small');
        const r = await src.restore([
          '-i',
          backups[0]!.id,
          '-p',
          join(mnt, 'data'),
          '--tablespace-map',
          `${tsOid}=${tsPath}`,
        ]);
        assert.notEqual(r.code, 0);
        assert.match(
          r.stderr,
          /ERROR: +not enough free space for .*data: the restore needs [\d.]+ MB, the file system of ".*small-fs-\d+" has [\d.]+ (MB|kB) free/,
        );
        assert.deepEqual(readdirSync(mnt), []);
        assert.equal(existsSync(tsPath), false);
      } finally {
        await runOk('umount', [mnt], { asTestUser: false });
      }
    });

    test('an interrupted restore (SIGTERM) removes what it wrote', async () => {
      const path = freshPath(src, 'interrupted');
      const tsPath = freshPath(src, 'ts-interrupted');
      const child = spawn(
        process.execPath,
        [
          join(REPO_ROOT, 'bin', 'bart.js'),
          '-c',
          src.setup.configPath,
          'RESTORE',
          '-s',
          'src',
          '-i',
          backups[1]!.id,
          '-p',
          path,
          '-w',
          '1',
          '--tablespace-map',
          `${tsOid}=${tsPath}`,
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const exited = new Promise<number | null>((res) => child.on('close', (code) => res(code)));
      const deadline = Date.now() + 30_000;
      while (!existsSync(join(path, '.pgbart-restore-incomplete')) && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 5));
      assert.ok(existsSync(join(path, '.pgbart-restore-incomplete')), 'the restore started writing');
      child.kill('SIGTERM');
      const code = await exited;
      assert.equal(code, 130, stderr);
      assert.match(stderr, /ERROR: +RESTORE was interrupted; nothing was left in/);
      assert.equal(existsSync(path), false);
      assert.equal(existsSync(tsPath), false);
    });

    test('a corrupted backup file is detected while streaming; PATH absent stays absent, empty stays empty', async () => {
      // Flip one byte in the middle of the largest file's content in the uncompressed tar.
      const dir = join(src.setup.backupPath, 'src', backups[0]!.id);
      const tar = join(dir, 'base.tar');
      const files = readFileSync(join(dir, 'manifest.jsonl'), 'utf8')
        .split('\n')
        .filter((l) => l.startsWith('{"f"'))
        .map((l) => (JSON.parse(l) as { f: { archive: string; type: string; size: number; offset: number } }).f)
        .filter((f) => f.archive === 'base' && f.type === 'file');
      const biggest = files.reduce((a, b) => (b.size > a.size ? b : a));
      const pos = biggest.offset + 512 + Math.floor(biggest.size / 2);
      const flip = () => {
        const fd = openSync(tar, 'r+');
        const b = Buffer.alloc(1);
        readSync(fd, b, 0, 1, pos);
        b[0] = b[0]! ^ 0xff;
        writeSync(fd, b, 0, 1, pos);
        closeSync(fd);
      };
      flip();
      try {
        const absent = freshPath(src, 'corrupt-absent');
        const tsPath = freshPath(src, 'ts-corrupt');
        let r = await src.restore([
          '-i',
          backups[0]!.id,
          '-p',
          absent,
          '-w',
          '2',
          '--tablespace-map',
          `${tsOid}=${tsPath}`,
        ]);
        assert.notEqual(r.code, 0, r.stdout);
        assert.match(r.stderr, /ERROR: +.*(checksum mismatch|damaged)/);
        assert.equal(existsSync(absent), false, 'absent PATH stays absent');
        assert.equal(existsSync(tsPath), false, 'absent tablespace location stays absent');

        const empty = freshPath(src, 'corrupt-empty');
        mkdirSync(empty, { mode: 0o755 });
        const ids = testUserIds();
        if (ids) chownSync(empty, ids.uid, ids.gid);
        const before = snapshot(empty);
        r = await src.restore(['-i', backups[0]!.id, '-p', empty, '-w', '1', '--tablespace-map', `${tsOid}=${tsPath}`]);
        assert.notEqual(r.code, 0);
        assert.deepEqual(snapshot(empty), before, 'empty PATH stays empty (and keeps its mode)');
      } finally {
        flip();
      }
    });
  });
}
