/**
 * Restore benchmark: part of `npm run bench` (bench.ts calls {@link restoreBench} on its loaded cluster),
 * or alone with `node dist/bench/restore-bench.js`. Times `bart RESTORE` (1 and 2 workers) of the same kinds of backups
 * as the backup benchmark, against `pgbackrest restore` (process-max 2, lz4) and `tar -x` of a
 * pg_basebackup tar, in the same run on the same cluster; writes bench/results/<date>-restore.md.
 *
 * Every restore ends durable: pgbart and pgbackrest sync what they write, and the tar rows include a
 * `sync -f` of the target so all columns pay the same price. The page cache is warm for everyone.
 *
 * Environment: BENCH_SCALE (pgbench scale, default 100 ≈ 1.5 GB, plus the same size of random data),
 * BENCH_PG (major version, default 15), BENCH_ONLY=pgbart to skip the peers.
 */
import { execFileSync } from 'node:child_process';
import { chownSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { backupIdFrom, createBackupFixture, type BackupFixture } from '../test/harness/backup-fixture.js';
import { pgbenchInit } from '../test/harness/load.js';
import { clientTool, REPO_ROOT } from '../test/harness/pg-binaries.js';
import { makeTempDir, removeTree, runOk, testUserIds } from '../test/harness/os.js';

const SCALE = Number(process.env.BENCH_SCALE ?? 100);
const VERSION = Number(process.env.BENCH_PG ?? 15);
const ONLY_PGBART = process.env.BENCH_ONLY === 'pgbart';

interface Row {
  label: string;
  seconds: number;
  note?: string;
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

function du(path: string): number {
  return Number(execFileSync('du', ['-sb', path], { encoding: 'utf8' }).split('\t')[0]);
}

/** What the benchmark cluster holds (bench-data.ts's BenchData has the same shape). */
export interface RestoreBenchData {
  dbBytes: number;
  pgbenchBytes: number;
  randomMb: number;
}

/** The same data as the backup benchmark: pgbench tables plus as much incompressible bytea. */
async function loadData(fx: BackupFixture): Promise<RestoreBenchData> {
  await pgbenchInit(fx.cluster, SCALE);
  const pgbenchBytes = Number(await fx.cluster.scalar('SELECT pg_database_size(current_database())'));
  const randomMb = Math.round(pgbenchBytes / 2 ** 20);
  const noise = join(fx.cluster.baseDir, 'noise.bin');
  await runOk('dd', ['if=/dev/urandom', `of=${noise}`, 'bs=1M', `count=${randomMb}`, 'status=none']);
  await fx.cluster.query('CREATE TABLE random_data (b bytea)');
  await fx.cluster.query('ALTER TABLE random_data ALTER COLUMN b SET STORAGE EXTERNAL');
  await fx.cluster.query(`INSERT INTO random_data SELECT pg_read_binary_file('${noise}', i * 1048576, 1048576) FROM generate_series(0, ${randomMb - 1}) i`);
  removeTree(noise);
  await fx.cluster.query('CHECKPOINT');
  await fx.cluster.switchWal();
  const dbBytes = Number(await fx.cluster.scalar('SELECT sum(pg_database_size(oid)) FROM pg_database'));
  return { dbBytes, pgbenchBytes, randomMb };
}

/**
 * Times RESTORE of each kind of backup of `fx`'s (loaded) cluster against pgbackrest restore and tar -x,
 * working under `work`; writes bench/results/<date>-restore.md.
 */
export async function restoreBench(fx: BackupFixture, work: string, data: RestoreBenchData): Promise<void> {
  const ids = testUserIds();
  if (!ids) throw new Error('run the benchmark as root (clusters run as the postgres user)');
  const { dbBytes, pgbenchBytes, randomMb } = data;
  const rows: Row[] = [];
  const report = (row: Row) => {
    rows.push(row);
    console.log(`${row.label.padEnd(48)} ${row.seconds.toFixed(2)} s${row.note ? `  (${row.note})` : ''}`);
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
    for (const workers of [1, 2]) {
      const seconds = await timed(async () => {
        const r = await fx.setup.bart(['RESTORE', '-s', fx.server, '-i', id, '-p', target, '-w', String(workers), '--target-immediate']);
        if (r.code !== 0) throw new Error(`bart RESTORE failed: ${r.stderr}`);
      });
      report({ label: `pgbart RESTORE ${c.label}, ${workers} worker${workers > 1 ? 's' : ''}`, seconds, note: `backup ${(size / 2 ** 20).toFixed(0)} MB` });
      removeTree(target);
    }
    removeTree(fx.backupDir(id));
  }

  if (!ONLY_PGBART) {
    // pgbackrest: its own repository and stanza, local, same cluster; restore with 2 processes, lz4.
    const repo = join(work, 'pgbackrest-restore-repo');
    mkdirSync(repo);
    chownSync(repo, ids.uid, ids.gid);
    const conf = join(work, 'pgbackrest-restore.conf');
    writeFileSync(
      conf,
      `[global]\nrepo1-path=${repo}\nlog-level-console=warn\nlog-path=${work}\nlock-path=${work}\nstart-fast=y\narchive-check=n\n\n` +
        `[bench]\npg1-path=${fx.cluster.dataDir}\npg1-port=${fx.cluster.port}\npg1-socket-path=${fx.cluster.baseDir}\npg1-user=postgres\n`,
    );
    chownSync(conf, ids.uid, ids.gid);
    chownSync(work, ids.uid, ids.gid);
    const pgbackrest = (args: string[]) => runOk('pgbackrest', [`--config=${conf}`, '--stanza=bench', ...args]);
    await pgbackrest(['stanza-create']);
    await pgbackrest(['--process-max=2', '--compress-type=lz4', '--type=full', 'backup']);
    for (const processes of [1, 2]) {
      mkdirSync(target, { mode: 0o700 });
      chownSync(target, ids.uid, ids.gid);
      const seconds = await timed(() => pgbackrest([`--process-max=${processes}`, `--pg1-path=${target}`, '--type=immediate', 'restore']));
      report({ label: `pgbackrest restore lz4, process-max ${processes}`, seconds, note: `repository ${(du(repo) / 2 ** 20).toFixed(0)} MB` });
      removeTree(target);
    }

    // pg_basebackup tars, extracted with tar (plus a sync, as the others make their data durable).
    const bb = join(work, 'basebackup-restore');
    for (const [label, args, extract] of [
      ['uncompressed', ['-Ft'], `tar -xf base.tar -C '${target}'`],
      ['gzip', ['-Ft', '-z'], `tar -xzf base.tar.gz -C '${target}'`],
    ] as const) {
      await runOk(clientTool('pg_basebackup'), ['-h', fx.cluster.host, '-p', String(fx.cluster.port), '-U', 'postgres', '-D', bb, '-X', 'fetch', '-c', 'fast', '--no-manifest', ...args]);
      mkdirSync(target, { mode: 0o700 });
      chownSync(target, ids.uid, ids.gid);
      const seconds = await timed(() => runOk('sh', ['-c', `cd '${bb}' && ${extract} && sync -f '${target}'`]));
      report({ label: `tar -x of a pg_basebackup tar, ${label}`, seconds, note: `tar ${(du(bb) / 2 ** 20).toFixed(0)} MB` });
      removeTree(target);
      removeTree(bb);
    }
  }

  const date = new Date().toISOString().slice(0, 10);
  const cpu = readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*: (.*)/)?.[1] ?? 'unknown CPU';
  const load = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  const lines = [
    `# Restore benchmark, ${date}`,
    '',
    `PostgreSQL ${VERSION}; cluster ${(dbBytes / 2 ** 30).toFixed(2)} GB = pgbench -i -s ${SCALE} (${(pgbenchBytes / 2 ** 20).toFixed(0)} MB) + ${randomMb} MB of random bytea; ` +
      `warm page cache; ${execFileSync('nproc', { encoding: 'utf8' }).trim()} cores (${cpu}); Node ${process.version}; catalog and target on the same disk; ` +
      `load average at the end ${load}.`,
    '',
    'Each time covers the whole command (process start, checks, extraction with checksum verification for pgbart, durable on disk). ' +
      'pgbart restores with `--target-immediate`; pgbackrest (Debian) with `--type=immediate`; the tar rows add `sync -f` of the target.',
    '',
    '| restore | seconds | notes |',
    '|---|---:|---|',
    ...rows.map((r) => `| ${r.label} | ${r.seconds.toFixed(2)} | ${r.note ?? ''} |`),
    '',
  ];
  mkdirSync(join(REPO_ROOT, 'bench', 'results'), { recursive: true });
  const out = join(REPO_ROOT, 'bench', 'results', `${date}-restore${ONLY_PGBART ? '-pgbart-only' : ''}.md`);
  writeFileSync(out, lines.join('\n'));
  console.log(`results written to ${out}`);
}

async function main(): Promise<void> {
  if (!testUserIds()) throw new Error('run the benchmark as root (clusters run as the postgres user)');
  console.log(`pgbart restore benchmark: PostgreSQL ${VERSION}, pgbench scale ${SCALE} plus the same size of random data`);
  const fx = await createBackupFixture({ version: VERSION, conf: { max_wal_size: '4GB', checkpoint_timeout: '30min', shared_buffers: '256MB' } });
  const work = makeTempDir('restore-bench');
  try {
    const data = await loadData(fx);
    console.log(`cluster size: ${(data.dbBytes / 2 ** 30).toFixed(2)} GB`);
    await restoreBench(fx, work, data);
  } finally {
    await fx.destroy();
    removeTree(work);
  }
}

// Run alone when executed directly; bench.ts imports restoreBench instead.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
