import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { versionsUnderTest, REPO_ROOT } from './harness/pg-binaries.js';
import { removeTree, testUserIds, type RunResult } from './harness/os.js';
import { prng as rng } from './harness/prng.js';
import { waitFor } from './harness/wait.js';
import { LONG_RUN } from './harness/test-size.js';
import { createRestoreSource, freshPath, startRestored, waitPromoted, type RestoreSource } from './harness/restore.js';

const version = versionsUnderTest()[0]!;
// A fixed seed in `npm test`, a fresh one in `npm run test:long` (in the suite's name: PGBART_CRASH_SEED replays it).
const SEED = Number(process.env.PGBART_CRASH_SEED ?? (LONG_RUN ? Math.floor(Math.random() * 2 ** 31) : 20261124));

/** One kill: a bart command and the crash point it must reach (none: BACKUP killed from outside). */
interface Kill {
  /** Evaluated when the kill runs, so picks see the catalog as the previous kill left it. */
  args: () => string[];
  crashAt?: string;
}

/**
 * A group of kills run back to back, each one crashing the recovery of the one before, before the
 * catalog is repaired by MANAGE + MANAGE -d and a new BACKUP. The points are ordered so that each is
 * reached (the test asserts the process died by SIGKILL); `pick` chooses backups with the seeded PRNG.
 */
interface Scenario {
  name: string;
  prepare?: 'mark-leftover' | 'age-wal';
  kills: (pick: { oldest: () => string; any: () => string }) => Kill[];
}

const SCENARIOS: Scenario[] = [
  {
    name: 'MANAGE -d killed at every step of a removal',
    prepare: 'mark-leftover',
    kills: () =>
      ['manage:locked', 'delete:renamed', 'delete:wal', 'delete:before-rm', 'delete:after-rm', 'delete:leftovers'].map(
        (crashAt) => ({ args: () => ['MANAGE', '-d'], crashAt }),
      ),
  },
  { name: 'MANAGE killed while marking obsolete', kills: () => [{ args: () => ['MANAGE'], crashAt: 'manage:marked' }] },
  {
    name: 'MANAGE killed between gzip rename and unlink',
    prepare: 'age-wal',
    kills: () => [{ args: () => ['MANAGE'], crashAt: 'compress:renamed' }],
  },
  {
    name: 'DELETE killed at every step',
    kills: (pick) => [
      { args: () => ['DELETE', '-i', pick.any()], crashAt: 'delete:locked' },
      { args: () => ['DELETE', '-i', pick.any()], crashAt: 'delete:renamed' },
      { args: () => ['DELETE', '-i', pick.oldest()], crashAt: 'delete:wal' },
    ],
  },
  { name: 'BACKUP killed after a random delay', kills: () => [{ args: () => ['BACKUP'] }] },
  // A second random BACKUP kill point only in `npm run test:long`: `npm test` reaches every crash point once.
  ...(LONG_RUN ? [{ name: 'BACKUP killed after a random delay', kills: () => [{ args: () => ['BACKUP'] }] }] : []),
];

function bartProcess(src: RestoreSource, args: string[], env: NodeJS.ProcessEnv = {}) {
  const child = spawn(process.execPath, [join(REPO_ROOT, 'bin', 'bart.js'), '-c', src.setup.configPath, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<RunResult & { signal: NodeJS.Signals | null }>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })),
  );
  return { child, done };
}

describe(`crash safety and locking on PostgreSQL ${version} (seed ${SEED})`, () => {
  let src: RestoreSource;
  let serverDir: string;
  let marker = 0;
  const ok = async (args: string[], env: NodeJS.ProcessEnv = {}) => {
    const r = await src.setup.bart(args, env);
    assert.equal(r.code, 0, `bart ${args.join(' ')} failed:\n${r.stdout}\n${r.stderr}`);
    return r;
  };
  const backupNow = async () => {
    await src.cluster.query('INSERT INTO t VALUES ($1)', [++marker]);
    await src.archiveCurrentWal();
    return src.backup([]);
  };
  const complete = () =>
    readdirSync(serverDir)
      .filter((n) => /^\d+$/.test(n))
      .sort();
  const segmentsInArchive = () =>
    new Set(
      readdirSync(src.archivePath)
        .filter((n) => /^[0-9A-F]{24}(\.gz)?$/.test(n))
        .map((n) => n.slice(0, 24)),
    );

  /** Every complete backup verifies, and the archive holds every segment from its start to the newest one. */
  const assertCatalogSound = async (when: string) => {
    if (complete().length > 0) {
      const v = await src.setup.bart(['VERIFY-CHKSUM', '-s', src.server]);
      assert.equal(v.code, 0, `${when}: VERIFY-CHKSUM\n${v.stdout}\n${v.stderr}`);
    }
    assertWalKept(when);
  };
  /** The archive holds every segment from each complete backup's start to the newest archived one. */
  const assertWalKept = (when: string) => {
    const ids = complete();
    const segs = segmentsInArchive();
    const newest = [...segs].sort().pop();
    for (const id of ids) {
      const start = readFileSync(join(serverDir, id, 'backupinfo'), 'utf8').match(/^START WAL LOCATION: (\w+)$/m)![1]!;
      if (!newest) assert.fail(`${when}: archive empty while backup ${id} exists`);
      for (let n = parseInt(start.slice(16), 16); n <= parseInt(newest.slice(16), 16); n++) {
        const name = start.slice(0, 16) + n.toString(16).toUpperCase().padStart(8, '0');
        assert.ok(segs.has(name), `${when}: WAL ${name} needed by backup ${id} is gone`);
      }
    }
  };

  before(async () => {
    src = await createRestoreSource(version, 'pg');
    src.configure(src.cluster, { retention_policy: '2 BACKUPS', wal_compression: 'enabled' });
    serverDir = join(src.setup.backupPath, src.server);
    await src.cluster.query('CREATE TABLE t (id int)');
    await backupNow();
    await backupNow();
  });
  after(async () => {
    await src?.destroy();
  });

  test('two BACKUPs at the same moment: one refuses naming the other; BACKUP vs MANAGE -d; stale lock', async () => {
    const a = bartProcess(src, ['BACKUP', '-s', src.server]);
    const b = bartProcess(src, ['BACKUP', '-s', src.server]);
    const results = await Promise.all([a.done, b.done]);
    const failed = results.filter((r) => r.code !== 0);
    assert.equal(failed.length, 1, results.map((r) => r.stderr).join('\n'));
    assert.match(
      failed[0]!.stderr,
      /ERROR: +BACKUP is running for this server \(pid \d+, started \d{4}-\d\d-\d\dT[^)]*\); try again when it has finished/,
    );

    // While a BACKUP holds the lock, MANAGE -d refuses and names it; the dry run and -l still work.
    const running = bartProcess(src, ['BACKUP', '-s', src.server]);
    const lockPath = join(serverDir, 'backup.lock');
    await waitFor('BACKUP to take the lock', () => existsSync(lockPath), { timeoutMs: 60_000, intervalMs: 10 });
    const refused = await src.setup.bart(['MANAGE', '-s', src.server, '-d']);
    const listing = await src.setup.bart(['MANAGE', '-s', src.server, '-l']);
    const backup = await running.done;
    assert.equal(backup.code, 0, backup.stderr);
    assert.notEqual(refused.code, 0, 'MANAGE -d ran while BACKUP held the lock');
    assert.match(
      refused.stderr,
      new RegExp(`ERROR: .*BACKUP is running for this server \\(pid ${running.child.pid}, started `),
    );
    assert.equal(listing.code, 0, listing.stderr);

    // Started at the same moment: whichever loses says who holds the lock; nothing is corrupted.
    const [x, y] = await Promise.all([
      bartProcess(src, ['BACKUP', '-s', src.server]).done,
      bartProcess(src, ['MANAGE', '-s', src.server, '-d']).done,
    ]);
    for (const r of [x, y])
      if (r.code !== 0) assert.match(r.stderr, /(BACKUP|MANAGE -d) is running for this server \(pid \d+/);
    assert.ok(x.code === 0 || y.code === 0);

    // A lock left by a dead process is taken over.
    const dead = Number(spawnSync('sh', ['-c', 'echo $$']).stdout.toString().trim());
    writeFileSync(lockPath, JSON.stringify({ pid: dead, command: 'DELETE', started: new Date().toISOString() }));
    const ids = testUserIds();
    if (ids) spawnSync('chown', [`${ids.uid}:${ids.gid}`, lockPath]);
    await ok(['MANAGE', '-s', src.server]);
    await ok(['MANAGE', '-s', src.server, '-d']);
    assert.ok(!existsSync(lockPath));
    await assertCatalogSound('after the lock tests');
  });

  test('SIGKILL at many points of BACKUP, MANAGE, MANAGE -d and DELETE leaves a sound catalog', async (t) => {
    const timing: string[] = [];
    let mark = Date.now();
    const lap = (what: string) => {
      timing.push(`${what} ${Date.now() - mark} ms`);
      mark = Date.now();
    };
    const random = rng(SEED);
    const order = [...SCENARIOS];
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    for (const [k, scenario] of order.entries()) {
      const step = `step ${k} (${scenario.name}, seed ${SEED})`;
      // Every step starts with one backup more than the policy (2 BACKUPS) keeps.
      while (complete().length < 3) await backupNow();
      lap('backups');
      if (scenario.prepare === 'mark-leftover') {
        await ok(['MANAGE', '-s', src.server]);
        const dead = Number(spawnSync('sh', ['-c', 'echo $$']).stdout.toString().trim());
        writeFileSync(join(src.archivePath, `.000000010000000000000001.gz.tmp-${dead}-zz`), 'half');
      }
      if (scenario.prepare === 'age-wal') {
        await src.cluster.query('INSERT INTO t VALUES ($1)', [++marker]);
        await src.archiveCurrentWal();
        const old = new Date(Date.now() - 60_000).toISOString();
        for (const n of readdirSync(src.archivePath)) spawnSync('touch', ['-d', old, join(src.archivePath, n)]);
      }
      const pick = {
        oldest: () => complete()[0]!,
        any: () => {
          const c = complete();
          return c[Math.floor(random() * c.length)]!;
        },
      };
      for (const kill of scenario.kills(pick)) {
        const [command, ...rest] = kill.args();
        const args = [command!, '-s', src.server, ...rest];
        const when = `${step}: bart ${args.join(' ')}${kill.crashAt ? ` with PGBART_CRASH_AT=${kill.crashAt}` : ''}`;
        if (kill.crashAt) {
          const r = await bartProcess(src, args, { PGBART_CRASH_AT: kill.crashAt }).done;
          assert.equal(
            r.signal,
            'SIGKILL',
            `${when}: the crash point was not reached (exit ${r.code})\n${r.stdout}\n${r.stderr}`,
          );
        } else {
          await src.cluster.query('INSERT INTO t VALUES ($1)', [++marker]);
          const p = bartProcess(src, args);
          const delay = 50 + Math.floor(random() * 2500);
          const timer = setTimeout(() => p.child.kill('SIGKILL'), delay);
          const r = await p.done;
          clearTimeout(timer);
          assert.ok(r.signal === 'SIGKILL' || r.code === 0, `${when}: BACKUP failed on its own\n${r.stderr}`);
        }
        lap(`kill ${kill.crashAt ?? 'backup'}`);
        // Cheap after every kill: each directory that looks like a backup is a listed, complete backup with its WAL.
        const listed = JSON.parse((await ok(['SHOW-BACKUPS', '-s', src.server, '--output', 'json'])).stdout) as {
          id: string;
          status: string;
        }[];
        for (const id of complete())
          assert.ok(
            ['active', 'obsolete', 'keep'].includes(listed.find((b) => b.id === id)?.status ?? ''),
            `${when}: ${id} looks like a backup but is not a complete one`,
          );
        assertWalKept(`${when}, right after the kill`);
      }
      // Every retained backup still verifies after the kills, before anything repairs the catalog.
      await assertCatalogSound(`${step}, after its kills`);
      lap('verify');
      const when = step;
      await ok(['MANAGE', '-s', src.server]);
      await ok(['MANAGE', '-s', src.server, '-d']);
      const left = readdirSync(serverDir).filter(
        (n) => n.endsWith('.partial') || n.endsWith('.deleting') || n.includes('.tmp-'),
      );
      assert.deepEqual(left, [], `${when}: MANAGE -d left leftovers`);
      assert.ok(
        !readdirSync(src.archivePath).some((n) => n.includes('.tmp-')),
        `${when}: temp files left in the archive`,
      );
      lap('manage');
      await backupNow();
      lap('backup');
      assertWalKept(`${when}, after MANAGE -d and BACKUP`);
    }
    t.diagnostic(timing.join(', '));
    await assertCatalogSound('after the crash loop');
    // The oldest retained backup still restores, replaying the archive to the newest WAL.
    await src.cluster.query('INSERT INTO t VALUES ($1)', [++marker]);
    await src.archiveCurrentWal();
    const oldest = complete()[0]!;
    const path = freshPath(src, 'after-crashes');
    const r = await src.restore(['-i', oldest, '-p', path]);
    assert.equal(r.code, 0, r.stderr);
    const restored = await startRestored(version, path);
    try {
      await waitPromoted(restored);
      assert.equal(Number(await restored.scalar('SELECT max(id) FROM t')), marker);
    } finally {
      await restored.destroy();
      removeTree(path);
    }
  });
});
