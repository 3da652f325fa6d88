// Benchmark: RESTORE timed against pgbackrest restore and tar -x of a pg_basebackup tar.

/**
 * Restore benchmark: part of `npm run bench` (bench.ts calls {@link restoreBench} on its loaded cluster),
 * or alone with `node dist/bench/restore-bench.js`. Times `bart RESTORE` (1 and 2 workers) of the same kinds of backups
 * as the backup benchmark, against `pgbackrest restore` (process-max 2, lz4) and `tar -x` of a
 * pg_basebackup tar, in the same run on the same cluster; writes bench/results/<date>-restore.md.
 *
 * Every restore ends durable: pgbart and pgbackrest sync what they write, and the tar rows include a
 * `sync -f` of the target so all columns pay the same price. Every restore is timed twice: page cache warm, and
 * dropped just before (cold).
 *
 * Environment: BENCH_SCALE (pgbench scale, default 100 ≈ 1.5 GB, plus the same size of random data),
 * BENCH_PG (major version, default 15), BENCH_ONLY=pgbart to skip the peers.
 */
import { execFileSync } from 'node:child_process';
import { chownSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { backupIdFrom, type BackupFixture } from '../test/harness/backup-fixture.js';
import { clientTool } from '../test/harness/pg-binaries.js';
import { removeTree, runOk, testUserIds } from '../test/harness/os.js';
import {
  BENCH,
  dropCaches,
  settleDisk,
  du,
  machineDescription,
  setupPgbackrest,
  timed,
  writeResults,
  type BenchData,
} from './bench-data.js';

interface Row {
  label: string;
  /** Page cache: warm, or dropped before the command. */
  cache: 'warm' | 'cold';
  seconds: number;
  /** CPU seconds (user + system) of the command and everything it started. */
  cpu: number;
  note?: string;
  /** pgbart's `RESTORE phases` debug line. */
  phases?: string;
}

const CACHES = ['warm', 'cold'] as const;

/**
 * CPU seconds (user + system) of this process's finished children and their descendants
 * (cutime + cstime of /proc/self/stat): the cost of a command, which a machine shared with other
 * work does not inflate the way it does the wall time.
 */
function childCpuSeconds(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  // Fields after the command name (which may hold spaces) start at field 3; cutime, cstime are 16, 17.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[13]) + Number(fields[14])) / CLOCK_TICKS;
}

/** USER_HZ: the unit of /proc times (100 on Linux's usual builds). */
const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

/** Times `fn` (wall and children's CPU), with the page cache dropped first for a cold run. */
async function timedIn(cache: 'warm' | 'cold', fn: () => Promise<unknown>): Promise<{ seconds: number; cpu: number }> {
  await (cache === 'cold' ? dropCaches() : settleDisk());
  const cpuBefore = childCpuSeconds();
  const seconds = await timed(fn);
  return { seconds, cpu: childCpuSeconds() - cpuBefore };
}

/**
 * Times RESTORE of each kind of backup of `fx`'s (loaded) cluster against pgbackrest restore and tar -x,
 * working under `work`; writes bench/results/<date>-restore.md.
 */
export async function restoreBench(fx: BackupFixture, work: string, data: BenchData): Promise<void> {
  const ids = testUserIds();
  if (!ids) throw new Error('run the benchmark as root (clusters run as the postgres user)');
  const { dbBytes, pgbenchBytes, randomMb } = data;
  const rows: Row[] = [];
  const report = (row: Row) => {
    rows.push(row);
    console.log(
      `${row.cache} ${row.label.padEnd(48)} ${row.seconds.toFixed(2)} s, CPU ${row.cpu.toFixed(2)} s${row.note ? `  (${row.note})` : ''}`,
    );
  };
  const target = join(work, 'restored');
  const cases: { label: string; bart: string[] }[] = [
    { label: 'plain, uncompressed', bart: ['-F', 'p'] },
    { label: 'tar, uncompressed', bart: ['-F', 't'] },
    { label: 'tar + gzip', bart: ['-F', 't', '-z'] },
    { label: 'tar + lz4', bart: ['-F', 't', '--compress', 'lz4'] },
    { label: 'tar + zstd', bart: ['-F', 't', '--compress', 'zstd'] },
  ];
  for (const c of cases) {
    const b = await fx.setup.bart(['BACKUP', '-s', fx.server, ...c.bart, '--thread-count', '2']);
    if (b.code !== 0) throw new Error(`bart BACKUP ${c.bart.join(' ')} failed: ${b.stderr}`);
    const id = backupIdFrom(b.stdout);
    const size = du(fx.backupDir(id));
    for (const cache of CACHES)
      for (const workers of [1, 2]) {
        let phases: string | undefined;
        const { seconds, cpu } = await timedIn(cache, async () => {
          const r = await fx.setup.bart([
            '-d',
            'RESTORE',
            '-s',
            fx.server,
            '-i',
            id,
            '-p',
            target,
            '-w',
            String(workers),
            '--target-immediate',
          ]);
          if (r.code !== 0) throw new Error(`bart RESTORE failed: ${r.stderr}`);
          phases = /RESTORE phases: (.*)$/m.exec(r.stdout + r.stderr)?.[1];
        });
        report({
          label: `pgbart RESTORE ${c.label}, ${workers} worker${workers > 1 ? 's' : ''}`,
          cache,
          seconds,
          cpu,
          note: `backup ${(size / 2 ** 20).toFixed(0)} MB`,
          ...(phases !== undefined ? { phases } : {}),
        });
        removeTree(target);
      }
    removeTree(fx.backupDir(id));
  }

  if (!BENCH.onlyPgbart) {
    // pgbackrest: its own repository and stanza, local, same cluster; restore with 2 processes, lz4.
    const { repo, run: pgbackrest } = await setupPgbackrest(fx, join(work, 'pgbackrest-restore'));
    await pgbackrest(['--process-max=2', '--compress-type=lz4', '--type=full', 'backup']);
    for (const cache of CACHES)
      for (const processes of [1, 2]) {
        mkdirSync(target, { mode: 0o700 });
        chownSync(target, ids.uid, ids.gid);
        const { seconds, cpu } = await timedIn(cache, () =>
          pgbackrest([`--process-max=${processes}`, `--pg1-path=${target}`, '--type=immediate', 'restore']),
        );
        report({
          label: `pgbackrest restore lz4, process-max ${processes}`,
          cache,
          seconds,
          cpu,
          note: `repository ${(du(repo) / 2 ** 20).toFixed(0)} MB`,
        });
        removeTree(target);
      }

    // pg_basebackup tars, extracted with tar (plus a sync, as the others make their data durable).
    const bb = join(work, 'basebackup-restore');
    for (const [label, args, extract] of [
      ['uncompressed', ['-Ft'], `tar -xf base.tar -C '${target}'`],
      ['gzip', ['-Ft', '-z'], `tar -xzf base.tar.gz -C '${target}'`],
    ] as const) {
      await runOk(clientTool('pg_basebackup'), [
        '-h',
        fx.cluster.host,
        '-p',
        String(fx.cluster.port),
        '-U',
        'postgres',
        '-D',
        bb,
        '-X',
        'fetch',
        '-c',
        'fast',
        '--no-manifest',
        ...args,
      ]);
      for (const cache of CACHES) {
        mkdirSync(target, { mode: 0o700 });
        chownSync(target, ids.uid, ids.gid);
        const extractOnce = () => runOk('sh', ['-c', `cd '${bb}' && ${extract} && sync -f '${target}'`]);
        const { seconds, cpu } = await timedIn(cache, extractOnce);
        report({
          label: `tar -x of a pg_basebackup tar, ${label}`,
          cache,
          seconds,
          cpu,
          note: `tar ${(du(bb) / 2 ** 20).toFixed(0)} MB`,
        });
        removeTree(target);
      }
      removeTree(bb);
    }
  }

  const date = new Date().toISOString().slice(0, 10);
  const lines = [
    `# Restore benchmark, ${date}`,
    '',
    `PostgreSQL ${BENCH.version}; cluster ${(dbBytes / 2 ** 30).toFixed(2)} GB = pgbench -i -s ${BENCH.scale} (${(pgbenchBytes / 2 ** 20).toFixed(0)} MB) + ${randomMb} MB of random bytea; ` +
      `data directory read once before measuring (compare the raw read time: here the page cache did not keep a whole 3 GB cluster, so runs are partly disk-bound); ${machineDescription()}; catalog and target on the same disk.`,
    '',
    'Each time covers the whole command (process start, checks, extraction with checksum verification for pgbart, durable on disk); ' +
      'CPU is the user + system time of the command and every process it started (less inflated than the wall time on a shared machine). ' +
      'pgbart restores with `--target-immediate`; pgbackrest (Debian) with `--type=immediate`; the tar rows add `sync -f` of the target.',
    '',
    '| cache | restore | seconds | CPU s (user+sys) | notes |',
    '|---|---|---:|---:|---|',
    ...rows.map((r) => `| ${r.cache} | ${r.label} | ${r.seconds.toFixed(2)} | ${r.cpu.toFixed(2)} | ${r.note ?? ''} |`),
    '',
    "## Where pgbart's time went (`RESTORE -d` phases)",
    '',
    "`files (workers)` is the workers' busy time summed over the workers; the other phases are main-thread waits.",
    '',
    ...rows.filter((r) => r.phases).map((r) => `- ${r.cache}, ${r.label}: ${r.phases}`),
    '',
  ];
  writeResults('restore', lines);
}

// Run alone with: BENCH_PARTS=restore npm run bench
