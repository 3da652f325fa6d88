// Benchmark: incremental backup time and size against the full backup and pgbackrest --type=incr.

/**
 * Incremental backup benchmark (part `incremental` of npm run bench): on the benchmark cluster,
 * a full backup, then about 1% of the cluster's blocks changed by random updates, then an
 * incremental: its time and size (WAL excluded) against the full backup's, and against
 * `pgbackrest --type=incr` (file-level) on the same change, in the same run.
 * Targets (issue 6): time ≤ 10% of the full's, size ≤ 3% of the full's.
 */
import { PosixStorage } from '../src/storage/posix/posix-storage.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { readManifest } from '../src/catalog/manifest.js';
import { backupIdFrom, type BackupFixture } from '../test/harness/backup-fixture.js';
import { BENCH, du, machineDescription, setupPgbackrest, timed, writeResults, type BenchData } from './bench-data.js';

/** Stored bytes of a backup's files, WAL excluded (from its manifest). */
async function dataBytes(dir: string): Promise<number> {
  let n = 0;
  for await (const line of readManifest(new PosixStorage(dir), 'manifest.jsonl')) {
    if (
      line.kind === 'file' &&
      line.entry.type === 'file' &&
      !(line.entry.archive === 'base' && line.entry.path.startsWith('pg_wal/'))
    )
      n += line.entry.size;
  }
  return n;
}

/** Runs the incremental benchmark on a loaded cluster; writes bench/results/<date>-incremental.md. */
export async function incrementalBench(fx: BackupFixture, work: string, data: BenchData): Promise<void> {
  const config = readFileSync(fx.setup.configPath, 'utf8');
  if (!/allow_incremental_backups/.test(config))
    fx.setup.writeConfig(`${config.trimEnd()}\nallow_incremental_backups = enabled\n`);
  const bart = async (args: string[]) => {
    const r = await fx.setup.bart(['BACKUP', '-s', fx.server, ...args]);
    if (r.code !== 0) throw new Error(`bart BACKUP ${args.join(' ')} failed: ${r.stderr}`);
    return backupIdFrom(r.stdout);
  };
  const pgbackrest = BENCH.onlyPgbart ? undefined : await setupPgbackrest(fx, join(work, 'pgbackrest-incr'));

  let fullId = '';
  const fullTime = await timed(async () => {
    fullId = await bart(['-F', 't', '--thread-count', '2']);
  });
  const pgbackrestFull = pgbackrest
    ? await timed(() => pgbackrest.run(['--process-max=2', '--compress-type=none', '--type=full', 'backup']))
    : undefined;

  // About 1% of all blocks: one tuple updated in each of that many random pages of the big tables.
  const totalBlocks = Math.floor(data.dbBytes / 8192);
  const target = Math.max(1, Math.floor(totalBlocks / 100));
  const accountsBlocks = Number(await fx.cluster.scalar("SELECT pg_relation_size('pgbench_accounts') / 8192"));
  const randomBlocks = Number(await fx.cluster.scalar("SELECT pg_relation_size('random_data') / 8192"));
  // Each UPDATE writes the old page and (no room left at fillfactor 100) a new one: half as many updates.
  const updates = Math.max(1, Math.floor(target / 2));
  await fx.cluster.query(
    `UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE ctid = ANY (ARRAY(SELECT format('(%s,1)', (random() * ${accountsBlocks - 1})::int)::tid FROM generate_series(1, ${Math.ceil(updates * 0.6)})))`,
  );
  await fx.cluster.query(
    `UPDATE random_data SET b = b WHERE ctid = ANY (ARRAY(SELECT format('(%s,1)', (random() * ${Math.max(0, randomBlocks - 1)})::int)::tid FROM generate_series(1, ${Math.ceil(updates * 0.4)})))`,
  );
  await fx.cluster.query('CHECKPOINT');

  const repoBefore = pgbackrest ? du(pgbackrest.repo) : 0;
  let incrId = '';
  const incrTime = await timed(async () => {
    incrId = await bart(['-F', 't', '--thread-count', '2', '--parent', fullId]);
  });
  const pgbackrestIncr = pgbackrest
    ? await timed(() => pgbackrest.run(['--process-max=2', '--compress-type=none', '--type=incr', 'backup']))
    : undefined;
  // What the pgbackrest incremental added to its repository (its files and their WAL).
  const pgbackrestIncrBytes = pgbackrest ? du(pgbackrest.repo) - repoBefore : undefined;

  const fullData = await dataBytes(fx.backupDir(fullId));
  const incrData = await dataBytes(fx.backupDir(incrId));
  const fullDisk = du(fx.backupDir(fullId));
  const incrDisk = du(fx.backupDir(incrId));
  const pct = (a: number, b: number) => `${((100 * a) / b).toFixed(2)}%`;
  const date = new Date().toISOString().slice(0, 10);
  const lines = [
    `# Incremental backup benchmark, ${date}`,
    '',
    `PostgreSQL ${BENCH.version}; cluster ${(data.dbBytes / 2 ** 30).toFixed(2)} GB (pgbench -i -s ${BENCH.scale} + ${data.randomMb} MB random bytea); ${machineDescription()}.`,
    `Change between the backups: ${updates} random single-tuple UPDATEs aimed at ~${target} blocks (1% of ${totalBlocks}); tar format, uncompressed, 2 threads.`,
    'The incremental reads its MBMs on the spot (no bart-scanner running), so its time includes scanning the WAL of the change.',
    '',
    '| backup | time (s) | data stored, WAL excluded (MB) | on disk with WAL (MB) |',
    '|---|---:|---:|---:|',
    `| pgbart full | ${fullTime.toFixed(2)} | ${(fullData / 2 ** 20).toFixed(1)} | ${(fullDisk / 2 ** 20).toFixed(1)} |`,
    `| pgbart incremental | ${incrTime.toFixed(2)} (${pct(incrTime, fullTime)} of full) | ${(incrData / 2 ** 20).toFixed(1)} (${pct(incrData, fullData)} of full) | ${(incrDisk / 2 ** 20).toFixed(1)} |`,
    ...(pgbackrest
      ? [
          `| pgbackrest full | ${pgbackrestFull!.toFixed(2)} | - | - |`,
          `| pgbackrest --type=incr (file-level) | ${pgbackrestIncr!.toFixed(2)} (${pct(pgbackrestIncr!, pgbackrestFull!)} of its full) | - | ${(pgbackrestIncrBytes! / 2 ** 20).toFixed(1)} (repository growth) |`,
        ]
      : []),
    '',
    `Targets: time ≤ 10% of the full's (${incrTime <= fullTime * 0.1 ? 'met' : 'NOT met'}), size ≤ 3% of the full's (${incrData <= fullData * 0.03 ? 'met' : 'NOT met'}).`,
    '',
  ];
  console.log(lines.join('\n'));
  writeResults('incremental', lines);
}

/** Standalone: `node dist/bench/incremental-bench.js` (BENCH_SCALE, BENCH_PG, BENCH_ONLY as for npm run bench). */
async function main(): Promise<void> {
  const { createBackupFixture } = await import('../test/harness/backup-fixture.js');
  const { makeTempDir, removeTree } = await import('../test/harness/os.js');
  const { BENCH_CLUSTER_CONF, ensurePgbackrest, loadBenchData } = await import('./bench-data.js');
  if (!BENCH.onlyPgbart) await ensurePgbackrest();
  const fx = await createBackupFixture({
    version: BENCH.version,
    conf: BENCH_CLUSTER_CONF,
    serverExtra: { allow_incremental_backups: 'enabled' },
  });
  const work = makeTempDir('bench-incr');
  try {
    const data = await loadBenchData(fx);
    console.log(`cluster size: ${(data.dbBytes / 2 ** 30).toFixed(2)} GB`);
    await incrementalBench(fx, work, data);
  } finally {
    await fx.destroy();
    removeTree(work);
  }
}

if (process.argv[1] && import.meta.url === (await import('node:url')).pathToFileURL(process.argv[1]).href) await main();
