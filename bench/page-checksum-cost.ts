// Benchmark: what verifying page checksums costs a backup (with and without --no-verify-checksums).

/**
 * What verifying page checksums costs a backup: BACKUP with and without `--no-verify-checksums` on
 * the same cluster, in the same run, alternating, best of N (the budget: at most 10% more).
 * Part `pagecheck` of `npm run bench` (on its 3 GB cluster); on its own,
 * `node dist/bench/page-checksum-cost.js` loads a ~1 GB cluster (BENCH_SCALE default 33) first.
 * Environment: BENCH_ROUNDS (default 3), BENCH_PG.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createBackupFixture, backupIdFrom, type BackupFixture } from '../test/harness/backup-fixture.js';
import { REPO_ROOT } from '../test/harness/pg-binaries.js';
import { removeTree, run, runOk, testUserIds } from '../test/harness/os.js';
import {
  BENCH,
  BENCH_CLUSTER_CONF,
  loadBenchData,
  machineDescription,
  writeResults,
  type BenchData,
} from './bench-data.js';

/** One measured case: best wall-clock and best CPU (user + system) seconds of the bart process. */
interface CostRow {
  label: string;
  verified: number;
  unverified: number;
  verifiedCpu: number;
  unverifiedCpu: number;
}

/** Times each case with and without verification, alternating; returns the rows and writes <date>-pagecheck.md. */
export async function pageCheckCost(
  fx: BackupFixture,
  data: BenchData,
  rounds = Number(process.env.BENCH_ROUNDS ?? 3),
): Promise<CostRow[]> {
  // bash's `time` reports the process's CPU time, worker threads included: on a shared machine the
  // wall clock also counts other processes' turns, the CPU time does not.
  const backup = async (args: string[]): Promise<{ wall: number; cpu: number }> => {
    const bart = [join(REPO_ROOT, 'bin', 'bart.js'), '-c', fx.setup.configPath];
    bart.push('BACKUP', '-s', fx.server);
    const r = await run('bash', ['-c', 'TIMEFORMAT="TIMES %R %U %S"; time "$@"', 'bash', ...bart, ...args], {
      asTestUser: false,
      cwd: fx.setup.dir,
    });
    if (r.code !== 0) throw new Error(`bart BACKUP ${args.join(' ')} failed: ${r.stderr}`);
    if (/page verification failed/.test(r.stderr)) {
      throw new Error(`corrupt pages reported on the benchmark cluster:\n${r.stderr}`);
    }
    removeTree(fx.backupDir(backupIdFrom(r.stdout)));
    const t = /TIMES ([\d.]+) ([\d.]+) ([\d.]+)/.exec(r.stderr)!;
    return { wall: Number(t[1]), cpu: Number(t[2]) + Number(t[3]) };
  };
  const cases = [
    { label: 'plain, uncompressed, 2 threads', args: ['-F', 'p', '--thread-count', '2'] },
    { label: 'tar, uncompressed', args: ['-F', 't', '--thread-count', '2'] },
    { label: 'tar + lz4, 2 threads', args: ['-F', 't', '--compress', 'lz4', '--thread-count', '2'] },
  ];
  const rows: CostRow[] = [];
  for (const c of cases) {
    const row: CostRow = {
      label: c.label,
      verified: Infinity,
      unverified: Infinity,
      verifiedCpu: Infinity,
      unverifiedCpu: Infinity,
    };
    for (let i = 0; i < rounds; i++) {
      const v = await backup(c.args);
      const u = await backup([...c.args, '--no-verify-checksums']);
      row.verified = Math.min(row.verified, v.wall);
      row.verifiedCpu = Math.min(row.verifiedCpu, v.cpu);
      row.unverified = Math.min(row.unverified, u.wall);
      row.unverifiedCpu = Math.min(row.unverifiedCpu, u.cpu);
    }
    rows.push(row);
    console.log(
      `${c.label.padEnd(32)} verified ${row.verified.toFixed(2)} s (CPU ${row.verifiedCpu.toFixed(2)} s), ` +
        `--no-verify-checksums ${row.unverified.toFixed(2)} s (CPU ${row.unverifiedCpu.toFixed(2)} s): ` +
        `wall x${(row.verified / row.unverified).toFixed(3)}, CPU x${(row.verifiedCpu / row.unverifiedCpu).toFixed(3)}`,
    );
  }
  const date = new Date().toISOString().slice(0, 10);
  const lines = [
    `# Page checksum verification cost, ${date}`,
    '',
    `PostgreSQL ${BENCH.version}; cluster ${(data.dbBytes / 2 ** 30).toFixed(2)} GB ` +
      `(pgbench -i -s ${BENCH.scale} + ${data.randomMb} MB of random bytea), data checksums on; ` +
      `${machineDescription()}. Best of ${rounds}, the two variants alternating, whole BACKUP command; ` +
      'CPU = user + system time of the bart process (worker threads included), which other load on the machine ' +
      'does not inflate as it does the wall clock.',
    '',
    '| case | verified (s) | --no-verify-checksums (s) | wall ratio | CPU verified (s) | CPU unverified (s) | ' +
      'CPU ratio |',
    '|---|---:|---:|---:|---:|---:|---:|',
    ...rows.map((r) => {
      const f = (v: number) => v.toFixed(2);
      const wall = `${f(r.verified)} | ${f(r.unverified)} | ${(r.verified / r.unverified).toFixed(3)}`;
      const cpu = `${f(r.verifiedCpu)} | ${f(r.unverifiedCpu)} | ${(r.verifiedCpu / r.unverifiedCpu).toFixed(3)}`;
      return `| ${r.label} | ${wall} | ${cpu} |`;
    }),
    '',
  ];
  writeResults('pagecheck', lines, false);
  return rows;
}

async function main(): Promise<void> {
  if (!testUserIds()) throw new Error('run the benchmark as root (clusters run as the postgres user)');
  if (process.env.BENCH_SCALE === undefined) BENCH.scale = 33;
  const fx = await createBackupFixture({ version: BENCH.version, conf: BENCH_CLUSTER_CONF });
  try {
    const data = await loadBenchData(fx);
    console.log(`cluster size: ${(data.dbBytes / 2 ** 30).toFixed(2)} GB`);
    await runOk('sh', ['-c', `tar cf - -C '${fx.cluster.dataDir}' . | cat > /dev/null`]); // warm the page cache
    await pageCheckCost(fx, data);
  } finally {
    await fx.destroy();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
