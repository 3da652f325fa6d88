// Concept: asynchronous WAL archiving (archive_async = on) against real clusters — a burst archived byte-identical with look-ahead, PITR through it, the archiver killed at every step, a failing repository bounded by the queue.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { after, before, describe, test } from 'node:test';
import { createBartSetup, serverSection, type BartSetup } from './harness/bart.js';
import { TestCluster } from './harness/cluster.js';
import { removeTree, run, testUserIds, type RunResult } from './harness/os.js';
import { REPO_ROOT, versionsUnderTest } from './harness/pg-binaries.js';
import { radosgwInstalled, TestS3 } from './harness/s3.js';
import { startRestored } from './harness/restore.js';
import { waitFor } from './harness/wait.js';
import { e2eOnly, sliced } from './harness/test-size.js';
import { loadConfig } from '../src/config/parse-config.js';
import { expectedArchiveCommand } from '../src/commands/archive-command.js';

const version = versionsUnderTest()[0]!;
const SEGMENT_RE = /^[0-9A-F]{24}$/;

type Exit = RunResult & { signal: NodeJS.Signals | null };

/** Runs bin/bart.js as the test user with extra environment; resolves with exit code and signal. */
function bart(setup: BartSetup, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Exit> {
  const ids = testUserIds();
  const child = spawn(process.execPath, [join(REPO_ROOT, 'bin', 'bart.js'), '-c', setup.configPath, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(ids ? { uid: ids.uid, gid: ids.gid } : {}),
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
}

function own(path: string): void {
  const ids = testUserIds();
  if (ids) chownSync(path, ids.uid, ids.gid);
}

/** Kills the archiver a test's archive_command started, if it still runs (it would exit when idle). */
function stopArchiver(spool: string): void {
  try {
    const { pid } = JSON.parse(readFileSync(join(spool, 'archiver.lock'), 'utf8')) as { pid: number };
    process.kill(pid, 'SIGKILL');
  } catch {
    /* none runs */
  }
}

function segmentsIn(dir: string): string[] {
  return existsSync(dir)
    ? readdirSync(dir)
        .filter((n) => SEGMENT_RE.test(n))
        .sort()
    : [];
}

describe(`asynchronous archiving, PostgreSQL ${version}`, { concurrency: false }, () => {
  test('a burst: INIT writes the sh fast path, look-ahead pushes ahead, every segment archived byte-identical; PITR through it; CHECK-CONFIG success', async () => {
    const cluster = await TestCluster.create({ version, conf: { archive_mode: 'on', wal_keep_size: "'2GB'" } });
    const setup = createBartSetup();
    const restored: string[] = [];
    try {
      setup.writeConfig(
        `${readFileSync(setup.configPath, 'utf8')}\n${serverSection(cluster, 'src', { archive_async: 'on', archive_async_workers: '2' })}`,
      );
      const init = await setup.bart(['INIT', '-s', 'src']);
      assert.equal(init.code, 0, init.stderr);
      // INIT changed archive_mode: restart.
      await cluster.restart();
      const command = String(await cluster.scalar('SHOW archive_command'));
      assert.match(command, /^m=.*\/archive-spool\/done\/%f; \[ -s "\$m" \] && .*stat -c '%%d %%i %%s %%\.9Y' %p/);
      assert.match(command, /\|\| .*ARCHIVE-PUSH -s src %p$/);

      await cluster.query('CREATE TABLE burst (i int, v text)');
      const backup = await setup.bart(['BACKUP', '-s', 'src']);
      assert.equal(backup.code, 0, backup.stderr);
      const names: string[] = [];
      // 20 segments: enough for look-ahead to push ahead of PostgreSQL (the CI run of 30 started bart 11 times).
      for (let i = 1; i <= 20; i++) {
        await cluster.query(`INSERT INTO burst SELECT ${i}, md5(g::text) FROM generate_series(1, 100) g`);
        names.push(await cluster.switchWal());
      }
      const archiveDir = join(setup.backupPath, 'src', 'archived_wals');
      await waitFor(
        'the burst in the archive',
        async () => {
          const row = (
            await cluster.query<{ w: string | null }>('SELECT last_archived_wal AS w FROM pg_stat_archiver')
          )[0]!;
          return row.w !== null && row.w >= names.at(-1)! && names.every((n) => existsSync(join(archiveDir, n)));
        },
        { timeoutMs: 120_000, details: () => cluster.logTail() },
      );
      for (const n of names) {
        assert.ok(
          readFileSync(join(archiveDir, n)).equals(readFileSync(join(cluster.dataDir, 'pg_wal', n))),
          `${n} archived byte-identical`,
        );
      }
      const spool = join(setup.backupPath, 'src', 'archive-spool');
      // Look-ahead really happened: the archiver logged files it pushed from pg_wal.
      const logText = readFileSync(setup.logfile, 'utf8');
      assert.match(logText, /archived WAL file "[0-9A-F]{24}" asynchronously \(archived, from wal\)/);
      // ... and the sh fast path acknowledged some to PostgreSQL without starting bart at all.
      const bartRuns = logText.match(/for asynchronous archiving of server "src"/g)?.length ?? 0;
      assert.ok(bartRuns < names.length, `ARCHIVE-PUSH ran ${bartRuns} times for ${names.length} segments`);
      console.log(
        `# burst of ${names.length}: ARCHIVE-PUSH started ${bartRuns} times, the sh fast path acknowledged the rest`,
      );
      // Nothing is left behind once PostgreSQL has acknowledged: the queue drains, markers are consumed.
      await waitFor('the spool to drain', () => segmentsIn(join(spool, 'queue')).length === 0, { timeoutMs: 60_000 });
      const check = await setup.bart(['CHECK-CONFIG', '-s', 'src']);
      assert.equal(check.code, 0, check.stdout + check.stderr);
      assert.match(
        check.stdout,
        /asynchronous archiving \(archive_async = on\): success \(\d+ of at most 64 files queued/,
      );

      // PITR through the async archive: all 40 batches come back.
      const path = join(setup.dir, 'restored');
      restored.push(path);
      const r = await setup.bart(['RESTORE', '-s', 'src', '-p', path]);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      const copy = await startRestored(version, path);
      try {
        await waitFor('the end of recovery', async () => (await copy.scalar('SELECT pg_is_in_recovery()')) !== true, {
          timeoutMs: 300_000,
          details: () => copy.logTail(),
        });
        assert.equal(Number(await copy.scalar('SELECT count(DISTINCT i) FROM burst')), names.length);
        // A local restore from the directory archive: restore_command copies plain segments with sh (faster than
        // serving them from the prefetch spool), so bart's ARCHIVE-GET ran only for what the archive does not hold.
        assert.match(readFileSync(join(path, 'postgresql.auto.conf'), 'utf8'), /restore_command = '\[ -f .* cp -- /);
        const bartGets = readFileSync(setup.logfile, 'utf8').match(/restored WAL file "[0-9A-F]{24}"/g)?.length ?? 0;
        assert.ok(bartGets < names.length, `ARCHIVE-GET restored ${bartGets} of ${names.length} segments`);
      } finally {
        await copy.destroy();
      }
    } finally {
      await cluster.destroy();
      stopArchiver(join(setup.backupPath, 'src', 'archive-spool'));
      for (const p of restored) removeTree(p);
      setup.cleanup();
    }
  });

  describe('the archiver killed with SIGKILL at each step', () => {
    let cluster: TestCluster;
    let segs: string[];
    let walSource: string;
    // One point of each class in `npm test` (ARCHIVE-PUSH queueing, the push into the repository, the
    // archiver's marker bookkeeping); every point in `npm run test:long`.
    const points = sliced(
      ['async:queued', 'push:copied', 'push:linked', 'async:pushed', 'async:before-marker', 'async:after-marker'],
      (p) => ['async:queued', 'push:copied', 'async:after-marker'].includes(p),
    );

    before(async () => {
      // Real WAL segments, kept in pg_wal (no archiving) and copied out once.
      cluster = await TestCluster.create({ version, conf: { wal_keep_size: "'1GB'" } });
      await cluster.query('CREATE TABLE k (i int)');
      for (let i = 0; i < 6; i++) {
        await cluster.query(`INSERT INTO k SELECT g FROM generate_series(1, 1000) g`);
        await cluster.switchWal();
      }
      await cluster.query('CHECKPOINT');
      const all = segmentsIn(join(cluster.dataDir, 'pg_wal'));
      segs = all.slice(-7, -1);
      assert.equal(segs.length, 6);
      walSource = join(cluster.baseDir, 'segments');
      mkdirSync(walSource);
      for (const s of segs) copyFileSync(join(cluster.dataDir, 'pg_wal', s), join(walSource, s));
      await cluster.stop();
    });
    after(async () => {
      await cluster?.destroy();
    });

    test('ARCHIVE-GET prefetches the next segments and serves one only while it is complete and still what the archive holds', async () => {
      const setup = createBartSetup();
      try {
        setup.writeConfig(
          `${readFileSync(setup.configPath, 'utf8')}\n[src]\nhost = 127.0.0.1\nuser = postgres\ncluster_owner = postgres\narchive_async = on\narchive_async_workers = 2\n`,
        );
        assert.equal((await setup.bart(['INIT', '-s', 'src', '--no-configure'])).code, 0);
        const archiveDir = join(setup.backupPath, 'src', 'archived_wals');
        const get = join(setup.backupPath, 'src', 'archive-spool', 'get');
        // A plain segment in a directory archive is one copy (RESTORE's restore_command makes it in sh): no prefetch.
        for (const s of segs) {
          copyFileSync(join(walSource, s), join(archiveDir, s));
          own(join(archiveDir, s));
        }
        const plainOut = join(setup.dir, 'plain-out');
        mkdirSync(plainOut);
        own(plainOut);
        const plain = await bart(setup, ['ARCHIVE-GET', '-s', 'src', segs[0]!, join(plainOut, segs[0]!)]);
        assert.equal(plain.code, 0, plain.stderr);
        await new Promise((r) => setTimeout(r, 3000));
        assert.deepEqual(existsSync(get) ? readdirSync(get) : [], [], 'no prefetcher for a plain directory archive');
        for (const s of segs) rmSync(join(archiveDir, s));
        // Compressed segments (wal_compression) cost a decompression each: those are prefetched.
        for (const s of segs) {
          writeFileSync(join(archiveDir, `${s}.gz`), gzipSync(readFileSync(join(walSource, s))));
          own(join(archiveDir, `${s}.gz`));
        }
        const out = join(setup.dir, 'out');
        mkdirSync(out);
        own(out);
        const fetch = async (s: string) => {
          const r = await bart(setup, ['ARCHIVE-GET', '-s', 'src', s, join(out, s)]);
          assert.equal(r.code, 0, r.stderr);
          assert.ok(
            readFileSync(join(out, s)).equals(readFileSync(join(walSource, s))),
            `${s} restored byte-identical`,
          );
        };
        await fetch(segs[0]!);
        await waitFor(
          'the next segments prefetched',
          () => segs.slice(1).every((s) => existsSync(join(get, `${s}.meta`))),
          {
            timeoutMs: 60_000,
          },
        );
        const served = () => (readFileSync(setup.logfile, 'utf8').match(/\(prefetched\)/g) ?? []).length;
        // A prefetched file cut short is never served (the archive's copy is).
        writeFileSync(join(get, segs[1]!), readFileSync(join(walSource, segs[1]!)).subarray(0, 8192));
        await fetch(segs[1]!);
        assert.equal(served(), 0, 'the cut file was not served');
        // Nor one whose archive object is no longer the one it was fetched from (replaced: another time).
        await waitFor('a prefetcher to finish', () => !existsSync(join(get, 'prefetch.lock')), { timeoutMs: 60_000 });
        utimesSync(join(archiveDir, `${segs[2]!}.gz`), new Date(), new Date(Date.now() - 60_000));
        await fetch(segs[2]!);
        assert.equal(served(), 0, 'the stale file was not served');
        // The next one is served from the prefetch directory, byte-identical.
        await fetch(segs[3]!);
        assert.equal(served(), 1, 'served from the prefetch directory');
        assert.equal(existsSync(join(get, segs[3]!)), false, 'moved out of the prefetch directory');
        // A segment not in the archive is "not there" (exit 1), as without prefetch.
        const r = await bart(setup, ['ARCHIVE-GET', '-s', 'src', '0000000100000000000000F0', join(out, 'x')]);
        assert.equal(r.code, 1, r.stderr);
        await waitFor('a prefetcher to finish', () => !existsSync(join(get, 'prefetch.lock')), { timeoutMs: 60_000 });
      } finally {
        setup.cleanup();
      }
    });

    for (const point of points) {
      test(`at ${point}: no segment lost, none acknowledged before it is durable, the next archiver finishes`, async () => {
        const setup = createBartSetup();
        try {
          setup.writeConfig(
            `${readFileSync(setup.configPath, 'utf8')}\n[src]\nhost = 127.0.0.1\nuser = postgres\ncluster_owner = postgres\narchive_async = on\narchive_async_workers = 2\n`,
          );
          assert.equal((await setup.bart(['INIT', '-s', 'src', '--no-configure'])).code, 0);
          // A pg_wal of our own: three segments PostgreSQL asks to archive (queued), three waiting as .ready (look-ahead).
          const pgWal = join(setup.dir, 'pg_wal');
          mkdirSync(join(pgWal, 'archive_status'), { recursive: true });
          own(pgWal);
          own(join(pgWal, 'archive_status'));
          for (const s of segs) {
            copyFileSync(join(walSource, s), join(pgWal, s));
            own(join(pgWal, s));
          }
          const archiveDir = join(setup.backupPath, 'src', 'archived_wals');
          const spool = join(setup.backupPath, 'src', 'archive-spool');
          const noSpawn = { PGBART_ASYNC_NO_SPAWN: '1' };
          const acked = new Set<string>();
          for (const s of segs.slice(0, 3)) {
            const env = point === 'async:queued' ? { ...noSpawn, PGBART_CRASH_AT: point } : noSpawn;
            const r = await bart(setup, ['ARCHIVE-PUSH', '-s', 'src', join(pgWal, s)], env);
            if (point === 'async:queued') {
              assert.equal(r.signal, 'SIGKILL', `${s}: ${r.stderr}`);
            } else {
              assert.equal(r.code, 0, r.stderr);
              acked.add(s);
            }
          }
          for (const s of segs.slice(3)) {
            writeFileSync(join(pgWal, 'archive_status', `${s}.ready`), '');
            own(join(pgWal, 'archive_status', `${s}.ready`));
          }

          /** Every acknowledged segment is queued whole or archived; every marker's segment is archived; nothing differs. */
          const invariants = (when: string) => {
            for (const s of segs) {
              const original = readFileSync(join(walSource, s));
              const archived = join(archiveDir, s);
              const queued = join(spool, 'queue', s);
              if (existsSync(archived))
                assert.ok(readFileSync(archived).equals(original), `${when}: ${s} archived intact`);
              if (existsSync(queued)) assert.ok(readFileSync(queued).equals(original), `${when}: ${s} queued intact`);
              if (acked.has(s))
                assert.ok(
                  existsSync(archived) || existsSync(queued),
                  `${when}: acknowledged ${s} is queued or archived`,
                );
              if (existsSync(join(spool, 'done', s)))
                assert.ok(existsSync(archived), `${when}: ${s} has a done marker only once archived`);
            }
            // Nothing but whole archive files under final names.
            for (const n of readdirSync(archiveDir))
              assert.ok(SEGMENT_RE.test(n) || n.startsWith('.'), `${when}: ${n}`);
          };
          invariants('after the pushes');
          if (point === 'async:queued') {
            // PostgreSQL saw a failure and asks again: the second push accepts the same bytes.
            for (const s of segs.slice(0, 3)) {
              const r = await bart(setup, ['ARCHIVE-PUSH', '-s', 'src', join(pgWal, s)], noSpawn);
              assert.equal(r.code, 0, r.stderr);
              acked.add(s);
            }
          }

          const killed = await bart(setup, ['ARCHIVER', '-s', 'src', '--wal-dir', pgWal, '--idle-ms', '300'], {
            PGBART_CRASH_AT: point,
          });
          if (point !== 'async:queued')
            assert.equal(killed.signal, 'SIGKILL', `the archiver reached ${point}: ${killed.stderr}`);
          invariants(`after the kill at ${point}`);

          const rerun = await bart(setup, ['ARCHIVER', '-s', 'src', '--wal-dir', pgWal, '--idle-ms', '300']);
          assert.equal(rerun.code, 0, rerun.stderr);
          invariants('after the next archiver');
          assert.deepEqual(segmentsIn(archiveDir), segs, 'every segment archived');
          assert.deepEqual(segmentsIn(join(spool, 'queue')), [], 'the queue is drained');
          assert.equal(existsSync(join(spool, 'last-error')), false);

          // The look-ahead segments are acknowledged by their marker, once, and only for the same file.
          const cfg = loadConfig(setup.configPath);
          const fast = expectedArchiveCommand(cfg, cfg.servers[0]!)
            .replace(/ARCHIVE-PUSH -s src %p$/, 'ARCHIVE-PUSH -s nosuchserver %p')
            .replace(/%%/g, '%');
          const viaSh = (s: string) =>
            run('sh', ['-c', fast.replace(/%p/g, `pg_wal/${s}`).replace(/%f/g, s)], { cwd: setup.dir });
          // INIT --no-configure wrote no archive_command; expectedArchiveCommand is the one INIT would write
          // only for a local server run by the BART user, which this is.
          assert.match(fast, /^m=/);
          const [a, b, c] = segs.slice(3);
          // A file whose identity changed (re-written: another mtime) is not acknowledged by the marker.
          utimesSync(join(pgWal, b!), new Date(), new Date(Date.now() - 5000));
          assert.notEqual((await viaSh(b!)).code, 0, 'a changed file falls through to ARCHIVE-PUSH');
          assert.equal((await viaSh(a!)).code, 0, 'the pushed file is acknowledged without bart');
          assert.equal(existsSync(join(spool, 'done', a!)), false, 'the marker is consumed');
          assert.notEqual((await viaSh(a!)).code, 0, 'a marker acknowledges once');
          // Through bart itself: the marker is taken as well.
          const viaBart = await bart(setup, ['ARCHIVE-PUSH', '-s', 'src', join(pgWal, c!)], noSpawn);
          assert.equal(viaBart.code, 0, viaBart.stderr);
          assert.equal(existsSync(join(spool, 'done', c!)), false);
          assert.deepEqual(segmentsIn(join(spool, 'queue')), [], 'acknowledged from the marker, not queued');
        } finally {
          setup.cleanup();
        }
      });
    }
  });

  test('a failing repository: the queue fills to archive_async_queue_max, then the archive_command fails with the error; CHECK-CONFIG reports it; a new archiver drains the spool', async () => {
    const cluster = await TestCluster.create({ version, conf: { archive_mode: 'on' } });
    const setup = createBartSetup();
    const archiveDir = join(setup.backupPath, 'src', 'archived_wals');
    try {
      setup.writeConfig(
        `${readFileSync(setup.configPath, 'utf8')}\n${serverSection(cluster, 'src', { archive_async: 'on', archive_async_queue_max: '3' })}`,
      );
      const init = await setup.bart(['INIT', '-s', 'src']);
      assert.equal(init.code, 0, init.stderr);
      await cluster.restart();
      // The repository fails: the BART user can no longer write into the archive directory.
      chmodSync(archiveDir, 0o500);
      const names: string[] = [];
      for (let i = 0; i < 6; i++) names.push(await cluster.switchWal());
      const spool = join(setup.backupPath, 'src', 'archive-spool');
      await waitFor(
        'archive_command to fail on a full queue',
        async () => Number(await cluster.scalar('SELECT failed_count FROM pg_stat_archiver')) > 0,
        { timeoutMs: 90_000, details: () => cluster.logTail() },
      );
      assert.equal(segmentsIn(join(spool, 'queue')).length, 3, 'the queue holds at most 3');
      assert.match(
        cluster.logTail(200),
        /holds 3 files \(archive_async_queue_max = 3\).*Archiver's last error: .*cannot archive WAL file/,
      );
      // WAL waits in pg_wal, where PostgreSQL keeps it: the segments not queued are still .ready.
      const ready = readdirSync(join(cluster.dataDir, 'pg_wal', 'archive_status')).filter((n) => n.endsWith('.ready'));
      assert.ok(ready.length >= 1, `segments waiting in pg_wal: ${ready.join(' ')}`);
      const check = await setup.bart(['CHECK-CONFIG', '-s', 'src']);
      assert.notEqual(check.code, 0);
      assert.match(
        check.stderr,
        /asynchronous archiving \(archive_async = on\): the WAL archiver failed: .*cannot archive WAL file .*3 of at most 3 files queued/,
      );

      // The repository is back: an archiver started by hand (or the next archive_command) drains the spool.
      chmodSync(archiveDir, 0o700);
      // (The archiver the archive_command started is still retrying, with back-off: then this one exits at once.)
      const drain = await bart(setup, ['ARCHIVER', '-s', 'src', '--idle-ms', '200']);
      assert.equal(drain.code, 0, drain.stderr);
      await waitFor('the spool to drain', () => segmentsIn(join(spool, 'queue')).length === 0, { timeoutMs: 30_000 });
      await waitFor('the error record to be cleared by success', () => !existsSync(join(spool, 'last-error')), {
        timeoutMs: 30_000,
      });
      // PostgreSQL retries the rest; every segment of the burst arrives.
      await cluster.switchWal();
      await waitFor('every segment archived', () => names.every((n) => existsSync(join(archiveDir, n))), {
        timeoutMs: 120_000,
        details: () => cluster.logTail(),
      });
      const after = await setup.bart(['CHECK-CONFIG', '-s', 'src']);
      assert.equal(after.code, 0, after.stdout + after.stderr);
    } finally {
      chmodSync(archiveDir, 0o700);
      await cluster.destroy();
      stopArchiver(join(setup.backupPath, 'src', 'archive-spool'));
      rmSync(setup.dir, { recursive: true, force: true });
    }
  });

  test(
    'an encrypted S3 repository: the async archiver pushes through the storage interface and makes MBMs while it holds the segments',
    {
      skip: radosgwInstalled()
        ? e2eOnly(
            'npm test runs the async archiver on posix; the S3 driver meets the same storage contract in storage-driver',
          )
        : 'radosgw not installed (scripts/install-deps.sh)',
    },
    async () => {
      const s3 = await TestS3.start();
      const cluster = await TestCluster.create({ version, conf: { archive_mode: 'on', wal_keep_size: "'1GB'" } });
      const setup = createBartSetup();
      try {
        await s3.createBucket('async-bucket');
        const passFile = join(setup.dir, 'passphrase');
        writeFileSync(passFile, 'correct horse battery staple\n', { mode: 0o600 });
        own(passFile);
        setup.writeConfig(
          `${readFileSync(setup.configPath, 'utf8')}repository = s3\ns3_endpoint = ${s3.httpEndpoint}\ns3_bucket = async-bucket\n` +
            `s3_key = ${s3.accessKey}\ns3_key_secret = ${s3.secretKey}\nrepository_cipher = aes-256-gcm\n` +
            `repository_cipher_pass_file = ${passFile}\n\n` +
            serverSection(cluster, 'src', { archive_async: 'on', allow_incremental_backups: 'enabled' }),
        );
        const init = await setup.bart(['INIT', '-s', 'src']);
        assert.equal(init.code, 0, init.stderr);
        await cluster.restart();
        await cluster.query('CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g');
        const names: string[] = [];
        for (let i = 0; i < 6; i++) {
          await cluster.query(`UPDATE t SET v = v || '${i}' WHERE id % 5 = ${i % 5}`);
          names.push(await cluster.switchWal());
        }
        const below = 'src/archived_wals/';
        const keys = async () =>
          (await s3.bucketEntries('async-bucket'))
            .filter((e) => e.name.startsWith(below))
            .map((e) => ({ ...e, name: e.name.slice(below.length) }));
        await waitFor(
          'every segment in the bucket',
          async () => {
            const k = (await keys()).map((e) => e.name);
            return names.every((n) => k.includes(n));
          },
          { timeoutMs: 120_000, details: () => cluster.logTail() },
        );
        const out = join(setup.dir, 'out');
        mkdirSync(out);
        own(out);
        for (const n of names) {
          const r = await bart(setup, ['ARCHIVE-GET', '-s', 'src', n, join(out, n)]);
          assert.equal(r.code, 0, r.stderr);
          assert.ok(
            readFileSync(join(out, n)).equals(readFileSync(join(cluster.dataDir, 'pg_wal', n))),
            `${n} byte-identical through the cipher`,
          );
          // Encrypted at rest: what radosgw holds is not the 16 MB segment (the cipher's framing and tags).
          assert.notEqual((await keys()).find((e) => e.name === n)?.size, 16 * 1024 * 1024);
        }
        // MBMs made at push time by the archiver (all but the newest, whose last record may continue).
        await waitFor(
          'MBMs of the burst',
          async () => (await keys()).filter((e) => e.name.endsWith('.mbm')).length >= names.length - 2,
          { timeoutMs: 60_000 },
        );
        assert.match(readFileSync(setup.logfile, 'utf8'), /asynchronously \(archived, from (wal|queue)\)/);
      } finally {
        await cluster.destroy();
        stopArchiver(join(setup.backupPath, 'src', 'archive-spool'));
        setup.cleanup();
        await s3.stop();
      }
    },
  );
});
