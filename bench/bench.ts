// Benchmark: npm run bench, backup timed against pg_basebackup and pgbackrest, then the restore and scanner parts.

/**
 * npm run bench — one ~3 GB cluster (pgbench -i -s 100 plus the same size of random data), and on
 * it, in the same run: BACKUP timed against pg_basebackup and pgbackrest, page cache warm and dropped before every
 * command (cold), with pgbart's `-d` phase times (bench/results/<date>-backup.md),
 * then RESTORE against pgbackrest restore and tar -x (bench/restore-bench.ts, <date>-restore.md); then
 * RESTORE --delta after 1% of a copy drifted against a full restore and pgbackrest restore --delta
 * (bench/delta-bench.ts, <date>-delta.md); then the cost of page checksum verification
 * (bench/page-checksum-cost.ts, <date>-pagecheck.md); then tar+lz4 BACKUP and RESTORE with and without
 * repository_cipher (bench/cipher-bench.ts, <date>-cipher.md); then BACKUP and RESTORE through S3 (radosgw) against
 * pgBackRest's S3 repository (bench/s3-bench.ts, <date>-s3.md); then the WAL scanner benchmark
 * (bench/scanner-bench.ts, <date>-scanner.md).
 *
 * Environment: BENCH_SCALE (pgbench scale, default 100), BENCH_PG (major version, default 15),
 * BENCH_ONLY=pgbart to skip the peers, BENCH_PARTS (default `backup,restore,delta,pagecheck,cipher,s3,archive,replay,scanner`;
 * `archive` is bench/archive-bench.ts: WAL archiving throughput, sync and async, against pgbackrest archive-push;
 * `replay` is bench/replay-bench.ts: a PITR restore replaying BENCH_REPLAY_GB (default 5) GB of archived WAL against
 * pgBackRest's async archive-get).
 * Backup part only: BENCH_CASES (labels to run, `|`-separated substrings, e.g. `plain, uncompressed|tar + lz4`),
 * BENCH_THREADS (default `1,2`), BENCH_CACHE (default `warm,cold`), BENCH_REPEAT (best of N, default 1), and
 * BENCH_BASELINE (a `bin/bart.js` of another build, timed in the same run beside this one: before/after under the
 * same load).
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { createBackupFixture, backupIdFrom, type BackupFixture } from '../test/harness/backup-fixture.js';
import { clientTool, REPO_ROOT } from '../test/harness/pg-binaries.js';
import { makeTempDir, removeTree, run, runOk, testUserIds } from '../test/harness/os.js';
import {
  BENCH,
  BENCH_CLUSTER_CONF,
  dropCaches,
  settleDisk,
  du,
  ensurePgbackrest,
  loadBenchData,
  machineDescription,
  setupPgbackrest,
  timed,
  writeResults,
  type BenchData,
} from './bench-data.js';

const PARTS = (process.env.BENCH_PARTS ?? 'backup,restore,delta,pagecheck,cipher,s3,archive,replay,scanner').split(',');
const CASES = process.env.BENCH_CASES?.split('|');
const THREADS = (process.env.BENCH_THREADS ?? '1,2').split(',').map(Number);
const CACHES = (process.env.BENCH_CACHE ?? 'warm,cold').split(',') as ('warm' | 'cold')[];
const REPEAT = Number(process.env.BENCH_REPEAT ?? 1);
const BASELINE = process.env.BENCH_BASELINE;

/** CPU seconds (user + system) of this process's children that have ended (from /proc/self/stat). */
function childCpuSeconds(): number {
  const fields = readFileSync('/proc/self/stat', 'utf8').split(') ')[1]!.split(' ');
  // cutime and cstime are fields 16 and 17 of stat(5), 14 and 15 after the name; in clock ticks (100 Hz here).
  return (Number(fields[14]) + Number(fields[15])) / 100;
}

/** The best (shortest) of `REPEAT` timed runs, and the CPU time of that run's children. */
async function bestOf(fn: () => Promise<unknown>, prepare: () => Promise<void>): Promise<{ s: number; cpu: number }> {
  let best: { s: number; cpu: number } | undefined;
  for (let i = 0; i < REPEAT; i++) {
    await prepare();
    const cpu0 = childCpuSeconds();
    const s = await timed(fn);
    const cpu = childCpuSeconds() - cpu0;
    if (!best || s < best.s) best = { s, cpu };
  }
  return best!;
}

interface Row {
  label: string;
  /** Page cache: kept warm, or dropped before every command. */
  cache: 'warm' | 'cold';
  /** pgbart's `BACKUP phases` debug line (where its time went). */
  pgbartPhases?: string;
  pgbart?: number;
  pgbartCpu?: number;
  /** The BENCH_BASELINE build, same case, same run. */
  baseline?: number;
  baselineCpu?: number;
  pgbartRss?: number;
  pgbartSize?: number;
  basebackup?: number;
  pgbackrest?: number;
}

/** Times BACKUP against pg_basebackup and pgbackrest on the loaded cluster; writes <date>-backup.md. */
async function backupBench(
  fx: BackupFixture,
  work: string,
  data: BenchData,
  rawRead: { warm: number; cold: number },
): Promise<void> {
  const bart = async (args: string[], bin?: string) => {
    const full = ['-d', 'BACKUP', '-s', fx.server, ...args];
    const r = bin
      ? await run(bin, ['-c', fx.setup.configPath, ...full], { asTestUser: false, cwd: fx.setup.dir })
      : await fx.setup.bart(full);
    if (r.code !== 0) throw new Error(`bart ${args.join(' ')} failed: ${r.stderr}`);
    const id = backupIdFrom(r.stdout);
    const size = du(fx.backupDir(id));
    const log = readFileSync(fx.setup.logfile, 'utf8');
    const rss = [...log.matchAll(/BACKUP: peak RSS ([\d.]+) MB/g)].pop();
    removeTree(fx.backupDir(id));
    const phases = /BACKUP phases: (.*)$/m.exec(r.stdout + r.stderr)?.[1];
    return { size, rss: rss ? Number(rss[1]) : undefined, phases };
  };
  const basebackup = async (args: string[]) => {
    const dir = join(work, 'pg_basebackup');
    await runOk(clientTool('pg_basebackup'), [
      '-h',
      fx.cluster.host,
      '-p',
      String(fx.cluster.port),
      '-U',
      'postgres',
      '-D',
      dir,
      // Its defaults otherwise, as issue 18 measured it: WAL streamed (-X stream) and a backup manifest with
      // CRC-32C checksums (pgbart's default file checksum is CRC-32C too).
      '-c',
      'fast',
      ...args,
    ]);
    removeTree(dir);
  };
  const pgbackrest = BENCH.onlyPgbart ? undefined : await setupPgbackrest(fx, join(work, 'pgbackrest'));
  const pgbackrestBackup = async (compress: string, processes: number) => {
    await pgbackrest!.run([`--process-max=${processes}`, `--compress-type=${compress}`, '--type=full', 'backup']);
    // Keep the repository small: only the newest full backup.
    await pgbackrest!.run(['--repo1-retention-full=1', 'expire']);
  };

  const rows: Row[] = [];
  const allCases: { label: string; bart: string[]; basebackup: string[]; pgbackrest: string }[] = [
    { label: 'plain, uncompressed', bart: ['-F', 'p'], basebackup: ['-Fp'], pgbackrest: 'none' },
    { label: 'tar, uncompressed', bart: ['-F', 't'], basebackup: ['-Ft'], pgbackrest: 'none' },
    { label: 'tar + gzip', bart: ['-F', 't', '-z'], basebackup: ['-Ft', '-z'], pgbackrest: 'gz' },
    {
      label: 'tar + lz4',
      bart: ['-F', 't', '--compress', 'lz4'],
      // Server-side, as issue 18 measured it: the walsender compresses while the client writes (the faster way).
      basebackup: ['-Ft', '--compress=server-lz4'],
      pgbackrest: 'lz4',
    },
    {
      label: 'tar + zstd',
      bart: ['-F', 't', '--compress', 'zstd'],
      basebackup: ['-Ft', '--compress=server-zstd'],
      pgbackrest: 'zst',
    },
  ];
  const cases = allCases.filter((c) => !CASES || CASES.some((want) => c.label.includes(want)));
  const basebackupTimes = new Map<string, number>();
  const ratio = (a?: number, b?: number) => (a && b ? (a / b).toFixed(2) : '-');
  for (const cache of CACHES) {
    // Cold: the page cache dropped before every command, so each one reads the cluster from disk.
    const prepare = cache === 'cold' ? dropCaches : settleDisk;
    const time = async (fn: () => Promise<unknown>) => (await bestOf(fn, prepare)).s;
    for (const threads of THREADS) {
      for (const c of cases) {
        const row: Row = { label: `${c.label}, ${threads} thread${threads > 1 ? 's' : ''}`, cache };
        let info: { size: number; rss: number | undefined; phases: string | undefined } = {
          size: 0,
          rss: undefined,
          phases: undefined,
        };
        if (BASELINE) {
          const b = await bestOf(() => bart([...c.bart, '--thread-count', String(threads)], BASELINE), prepare);
          row.baseline = b.s;
          row.baselineCpu = b.cpu;
        }
        const mine = await bestOf(async () => {
          info = await bart([...c.bart, '--thread-count', String(threads)]);
        }, prepare);
        row.pgbart = mine.s;
        row.pgbartCpu = mine.cpu;
        row.pgbartSize = info.size;
        row.pgbartRss = info.rss;
        if (info.phases !== undefined) row.pgbartPhases = info.phases;
        if (pgbackrest) {
          // pg_basebackup has no parallelism: one measurement serves both thread rows.
          const key = `${cache} ${c.label}`;
          if (!basebackupTimes.has(key)) basebackupTimes.set(key, await time(() => basebackup(c.basebackup)));
          row.basebackup = basebackupTimes.get(key)!;
          row.pgbackrest = await time(() => pgbackrestBackup(c.pgbackrest, threads));
        }
        rows.push(row);
        console.log(
          `${cache} ${row.label.padEnd(34)} pgbart ${row.pgbart.toFixed(2)} s cpu ${row.pgbartCpu.toFixed(2)} s${row.baseline !== undefined ? ` (baseline ${row.baseline.toFixed(2)} s cpu ${row.baselineCpu!.toFixed(2)} s)` : ''} (${((row.pgbartSize ?? 0) / 2 ** 20).toFixed(0)} MB, RSS ${row.pgbartRss ?? '?'} MB)  pg_basebackup ${row.basebackup?.toFixed(2) ?? '-'} s (x${ratio(row.pgbart, row.basebackup)})  pgbackrest ${row.pgbackrest?.toFixed(2) ?? '-'} s (x${ratio(row.pgbart, row.pgbackrest)})`,
        );
      }
    }
  }

  const date = new Date().toISOString().slice(0, 10);
  const fmt = (v?: number) => (v === undefined ? '-' : v.toFixed(2));
  const lines = [
    `# Backup benchmark, ${date}`,
    '',
    `PostgreSQL ${BENCH.version}; cluster ${(data.dbBytes / 2 ** 30).toFixed(2)} GB = pgbench -i -s ${BENCH.scale} (${(data.pgbenchBytes / 2 ** 20).toFixed(0)} MB) + ${data.randomMb} MB of random bytea; ` +
      `data directory read once before measuring (compare the raw read time: here the page cache did not keep a whole 3 GB cluster, so runs are partly disk-bound); ${machineDescription()}; catalog and cluster on the same disk.`,
    `Raw read of the data directory (\`tar cf - | cat\`): **${rawRead.warm.toFixed(2)} s** warm, **${rawRead.cold.toFixed(2)} s** cold.`,
    '',
    'Each time covers the whole command, durable on disk (pgbart fsyncs what it writes, as pg_basebackup and pgbackrest do). ' +
      'pg_basebackup (Debian 15, `-c fast`, otherwise its defaults: WAL streamed, a backup manifest with CRC-32C; lz4 and zstd compressed by the server, `--compress=server-lz4|server-zstd`, gzip by the client) is single-threaded: the same measurement is shown in both thread rows. ' +
      'pgbackrest (Debian) runs with `--process-max` = threads, `start-fast`, `archive-check=n`. Ratios below 1.0 mean pgbart is faster. ' +
      'Warm: the page cache holds what the previous commands read; cold: `echo 3 > /proc/sys/vm/drop_caches` (after a sync) before every command.',
    '',
    '| cache | case | pgbart (s) | size (MB) | peak RSS (MB) | pg_basebackup (s) | pgbart / pg_basebackup | pgbackrest (s) | pgbart / pgbackrest |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|',
    ...rows.map(
      (r) =>
        `| ${r.cache} | ${r.label} | ${fmt(r.pgbart)} | ${((r.pgbartSize ?? 0) / 2 ** 20).toFixed(0)} | ${r.pgbartRss ?? '-'} | ${fmt(r.basebackup)} | ${ratio(r.pgbart, r.basebackup)} | ${fmt(r.pgbackrest)} | ${ratio(r.pgbart, r.pgbackrest)} |`,
    ),
    '',
    "## Where pgbart's time went (`BACKUP -d` phases)",
    '',
    'Main-thread waits and work, and worker busy time summed over the workers (phases overlap: they do not add up ' +
      'to the wall time).',
    '',
    ...rows.filter((r) => r.pgbartPhases).map((r) => `- ${r.cache}, ${r.label}: ${r.pgbartPhases}`),
    '',
    `CPU time (user + system) of each pgbart run: ${rows.map((r) => `${r.cache} ${r.label} ${fmt(r.pgbartCpu)} s`).join('; ')}.`,
    ...(BASELINE
      ? [
          '',
          `Baseline build (${BASELINE}) in the same run: ${rows.map((r) => `${r.cache} ${r.label} ${fmt(r.baseline)} s (cpu ${fmt(r.baselineCpu)} s)`).join('; ')}.`,
        ]
      : []),
    `Load average at the end: ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')} (${cpus().length} cores).`,
    '',
  ];
  writeResults('backup', lines);
}

async function main(): Promise<void> {
  if (!testUserIds()) throw new Error('run the benchmark as root (clusters run as the postgres user)');
  if (!BENCH.onlyPgbart) await ensurePgbackrest();
  console.log(
    `pgbart benchmark: PostgreSQL ${BENCH.version}, pgbench scale ${BENCH.scale} plus the same size of random data`,
  );
  if (['backup', 'restore', 'delta', 'pagecheck', 'cipher', 's3'].some((p) => PARTS.includes(p))) {
    const fx = await createBackupFixture({ version: BENCH.version, conf: BENCH_CLUSTER_CONF });
    const work = makeTempDir('bench');
    try {
      const data = await loadBenchData(fx);
      console.log(`cluster size: ${(data.dbBytes / 2 ** 30).toFixed(2)} GB`);
      // Warm the page cache, and measure the floor: reading every file once.
      const read = () => runOk('sh', ['-c', `tar cf - -C '${fx.cluster.dataDir}' . | cat > /dev/null`]);
      await read();
      const warmRead = await timed(read);
      await dropCaches();
      const rawRead = { warm: warmRead, cold: await timed(read) };
      await read();
      console.log(`raw read (tar cf - | cat): ${rawRead.warm.toFixed(2)} s warm, ${rawRead.cold.toFixed(2)} s cold`);
      if (PARTS.includes('backup')) await backupBench(fx, work, data, rawRead);
      if (PARTS.includes('restore')) {
        const { restoreBench } = await import('./restore-bench.js');
        await restoreBench(fx, work, data);
      }
      if (PARTS.includes('delta')) {
        const { deltaBench } = await import('./delta-bench.js');
        await deltaBench(fx, work, data);
      }
      if (PARTS.includes('pagecheck')) {
        const { pageCheckCost } = await import('./page-checksum-cost.js');
        await pageCheckCost(fx, data);
      }
      if (PARTS.includes('cipher')) {
        const { cipherBench } = await import('./cipher-bench.js');
        await cipherBench(fx, work, data);
      }
      if (PARTS.includes('s3')) {
        const { s3Bench } = await import('./s3-bench.js');
        await s3Bench(fx, work, data);
      }
    } finally {
      await fx.destroy();
      removeTree(work);
    }
  }
  if (PARTS.includes('archive')) {
    const { archiveBench } = await import('./archive-bench.js');
    await archiveBench();
  }
  if (PARTS.includes('replay')) {
    const { replayBench } = await import('./replay-bench.js');
    await replayBench();
  }
  if (PARTS.includes('scanner')) {
    const r = spawnSync(process.execPath, [join(REPO_ROOT, 'dist', 'bench', 'scanner-bench.js')], { stdio: 'inherit' });
    if (r.status !== 0) throw new Error('the scanner benchmark failed');
  }
}

await main();
