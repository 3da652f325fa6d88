/**
 * What verifying page checksums costs a backup: BACKUP with and without `--no-verify-checksums` on
 * the same cluster, in the same run, alternating, best of N (the budget: at most 10% more).
 * Part `pagecheck` of `npm run bench` (on its 3 GB cluster); on its own,
 * `node dist/bench/page-checksum-cost.js` loads a ~1 GB cluster (BENCH_SCALE default 33) first.
 * Environment: BENCH_ROUNDS (default 3), BENCH_PG.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createBackupFixture, backupIdFrom, type BackupFixture } from '../test/harness/backup-fixture.js';
import { REPO_ROOT } from '../test/harness/pg-binaries.js';
import { removeTree, runOk, testUserIds } from '../test/harness/os.js';
import { BENCH, BENCH_CLUSTER_CONF, loadBenchData, machineDescription, timed, type BenchData } from './bench-data.js';

/** One measured case. */
interface CostRow {
  label: string;
  verified: number;
  unverified: number;
}

/** Times each case with and without verification, alternating; returns the rows and writes <date>-pagecheck.md. */
export async function pageCheckCost(
  fx: BackupFixture,
  data: BenchData,
  rounds = Number(process.env.BENCH_ROUNDS ?? 3),
): Promise<CostRow[]> {
  const backup = async (args: string[]) => {
    const r = await fx.setup.bart(['BACKUP', '-s', fx.server, ...args]);
    if (r.code !== 0) throw new Error(`bart BACKUP ${args.join(' ')} failed: ${r.stderr}`);
    if (/page verification failed/.test(r.stderr)) {
      throw new Error(`corrupt pages reported on the benchmark cluster:\n${r.stderr}`);
    }
    removeTree(fx.backupDir(backupIdFrom(r.stdout)));
  };
  const cases = [
    { label: 'plain, uncompressed, 2 threads', args: ['-F', 'p', '--thread-count', '2'] },
    { label: 'tar, uncompressed', args: ['-F', 't', '--thread-count', '2'] },
    { label: 'tar + lz4, 2 threads', args: ['-F', 't', '--compress', 'lz4', '--thread-count', '2'] },
  ];
  const rows: CostRow[] = [];
  for (const c of cases) {
    let verified = Infinity;
    let unverified = Infinity;
    for (let i = 0; i < rounds; i++) {
      verified = Math.min(verified, await timed(() => backup(c.args)));
      unverified = Math.min(unverified, await timed(() => backup([...c.args, '--no-verify-checksums'])));
    }
    rows.push({ label: c.label, verified, unverified });
    console.log(
      `${c.label.padEnd(32)} verified ${verified.toFixed(2)} s, ` +
        `--no-verify-checksums ${unverified.toFixed(2)} s: x${(verified / unverified).toFixed(3)}`,
    );
  }
  const date = new Date().toISOString().slice(0, 10);
  const lines = [
    `# Page checksum verification cost, ${date}`,
    '',
    `PostgreSQL ${BENCH.version}; cluster ${(data.dbBytes / 2 ** 30).toFixed(2)} GB ` +
      `(pgbench -i -s ${BENCH.scale} + ${data.randomMb} MB of random bytea), data checksums on; ` +
      `${machineDescription()}. Best of ${rounds}, the two variants alternating, whole BACKUP command.`,
    '',
    '| case | verified (s) | --no-verify-checksums (s) | ratio |',
    '|---|---:|---:|---:|',
    ...rows.map((r) => {
      const ratio = (r.verified / r.unverified).toFixed(3);
      return `| ${r.label} | ${r.verified.toFixed(2)} | ${r.unverified.toFixed(2)} | ${ratio} |`;
    }),
    '',
  ];
  mkdirSync(join(REPO_ROOT, 'bench', 'results'), { recursive: true });
  const out = join(REPO_ROOT, 'bench', 'results', `${date}-pagecheck.md`);
  writeFileSync(out, lines.join('\n'));
  console.log(`results written to ${out}`);
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
