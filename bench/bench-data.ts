// Benchmark: settings, data load, timing helpers and pgbackrest setup shared by every benchmark script.

import { execFileSync } from 'node:child_process';
import { chownSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BackupFixture } from '../test/harness/backup-fixture.js';
import type { TestCluster } from '../test/harness/cluster.js';
import { REPO_ROOT } from '../test/harness/pg-binaries.js';
import { pgbenchInit } from '../test/harness/load.js';
import { removeTree, runOk, testUserIds } from '../test/harness/os.js';

/** Benchmark settings from the environment, shared by every benchmark script. */
export const BENCH = {
  /** pgbench scale (100 ≈ 1.5 GB), plus the same size of random data. */
  scale: Number(process.env.BENCH_SCALE ?? 100),
  /** PostgreSQL major version of the benchmark cluster. */
  version: Number(process.env.BENCH_PG ?? 15),
  /** Skip pg_basebackup and pgbackrest. */
  onlyPgbart: process.env.BENCH_ONLY === 'pgbart',
};

/** The benchmark cluster's settings: room for bulk loads without checkpoints in the way. */
export const BENCH_CLUSTER_CONF = { max_wal_size: '4GB', checkpoint_timeout: '30min', shared_buffers: '256MB' };

/** What the data load made. */
export interface BenchData {
  dbBytes: number;
  pgbenchBytes: number;
  randomMb: number;
}

/** Seconds an async function takes. */
export async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** Polls every 100 ms until `done` holds; throws naming `what` after `timeoutMs`. */
export async function until(what: string, done: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Empties the page cache (dirty pages written first), so the next command reads from disk: the "cold" runs.
 * Needs root, as the benchmark does.
 */
/**
 * Lets the previous command's writes and deletions reach the disk before the next command is timed (warm runs): the
 * root file system here is mounted with `discard`, and the discards of a just-deleted 3 GB backup otherwise slow
 * whichever tool writes next.
 */
export async function settleDisk(): Promise<void> {
  await runOk('sync', [], { asTestUser: false });
}

export async function dropCaches(): Promise<void> {
  await runOk('sh', ['-c', 'sync && echo 3 > /proc/sys/vm/drop_caches'], { asTestUser: false });
}

/**
 * Writes a benchmark's results to `bench/results/<date>-<part>.md` (`-pgbart-only` added when the peers were skipped
 * and `comparesPeers`) and says where; returns the path.
 */
export function writeResults(part: string, lines: string[], comparesPeers = true): string {
  const date = new Date().toISOString().slice(0, 10);
  const dir = join(REPO_ROOT, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const out = join(dir, `${date}-${part}${comparesPeers && BENCH.onlyPgbart ? '-pgbart-only' : ''}.md`);
  writeFileSync(out, lines.join('\n'));
  console.log(`results written to ${out}`);
  return out;
}

/** Bytes under a path. */
export function du(path: string): number {
  return Number(execFileSync('du', ['-sb', path], { encoding: 'utf8' }).split('\t')[0]);
}

/** `pgbench -i -s scale` plus as much incompressible bytea (stored uncompressed), checkpointed. */
export async function loadBenchData(fx: BackupFixture): Promise<BenchData> {
  await pgbenchInit(fx.cluster, BENCH.scale);
  const pgbenchBytes = Number(await fx.cluster.scalar('SELECT pg_database_size(current_database())'));
  const randomMb = Math.round(pgbenchBytes / 2 ** 20);
  const noise = join(fx.cluster.baseDir, 'noise.bin');
  await runOk('dd', ['if=/dev/urandom', `of=${noise}`, 'bs=1M', `count=${randomMb}`, 'status=none']);
  await fx.cluster.query('CREATE TABLE random_data (b bytea)');
  await fx.cluster.query('ALTER TABLE random_data ALTER COLUMN b SET STORAGE EXTERNAL');
  await fx.cluster.query(
    `INSERT INTO random_data SELECT pg_read_binary_file('${noise}', i * 1048576, 1048576) FROM generate_series(0, ${randomMb - 1}) i`,
  );
  removeTree(noise);
  // Set hint bits and the visibility map now: otherwise autovacuum does it during the first
  // measurements and its WAL (full-page images, data checksums are on) lands in those backups.
  await fx.cluster.query('VACUUM (FREEZE, ANALYZE)');
  await fx.cluster.query('CHECKPOINT');
  await fx.cluster.switchWal();
  const dbBytes = Number(await fx.cluster.scalar('SELECT sum(pg_database_size(oid)) FROM pg_database'));
  return { dbBytes, pgbenchBytes, randomMb };
}

/** A pgbackrest stanza `bench` for the fixture's cluster, with its repository under `work`. */
/** A pgBackRest stanza `bench` set up for a benchmark: its repository, config file and a runner. */
export interface PgbackrestSetup {
  /** repo1-path. */
  repo: string;
  /** The config file (`--config=`), for commands PostgreSQL runs (archive_command). */
  conf: string;
  /** Runs `pgbackrest --config=… --stanza=bench <args>` as the cluster owner. */
  run: (args: string[]) => Promise<unknown>;
}

/**
 * Creates a pgBackRest stanza `bench` for `cluster` in `work` (repository, spool, logs, locks), with `extraGlobal`
 * lines added to its [global] section — one config for every benchmark that compares against pgBackRest.
 */
export async function setupPgbackrestFor(
  cluster: TestCluster,
  work: string,
  extraGlobal: string,
): Promise<PgbackrestSetup> {
  const ids = testUserIds()!;
  const repo = join(work, 'pgbackrest-repo');
  const spool = join(work, 'pgbackrest-spool');
  for (const dir of [work, repo, spool]) {
    mkdirSync(dir, { recursive: true });
    chownSync(dir, ids.uid, ids.gid);
  }
  const conf = join(work, 'pgbackrest.conf');
  writeFileSync(
    conf,
    `[global]\nrepo1-path=${repo}\nlog-level-console=warn\nlog-path=${work}\nlock-path=${work}\nspool-path=${spool}\n` +
      `${extraGlobal}\n` +
      `[bench]\npg1-path=${cluster.dataDir}\npg1-port=${cluster.port}\npg1-socket-path=${cluster.baseDir}\npg1-user=postgres\n`,
  );
  chownSync(conf, ids.uid, ids.gid);
  const run = (args: string[]) => runOk('pgbackrest', [`--config=${conf}`, '--stanza=bench', ...args]);
  await run(['stanza-create']);
  return { repo, conf, run };
}

/** pgBackRest set up for the backup and restore benchmarks (fast start, no archive check). */
export async function setupPgbackrest(fx: BackupFixture, work: string): Promise<PgbackrestSetup> {
  return setupPgbackrestFor(fx.cluster, work, 'start-fast=y\narchive-check=n\n');
}

/** The machine line of a results file. */
export function machineDescription(): string {
  const cpu = readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*: (.*)/)?.[1] ?? 'unknown CPU';
  const load = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  return `${execFileSync('nproc', { encoding: 'utf8' }).trim()} cores (${cpu}); Node ${process.version}; load average at the end ${load}`;
}

/** Installs pgbackrest from Debian when missing (the benchmark's only extra dependency). */
export async function ensurePgbackrest(): Promise<void> {
  try {
    execFileSync('pgbackrest', ['version'], { stdio: 'ignore' });
  } catch {
    console.log('installing pgbackrest (Debian package) for the comparison');
    await runOk(
      'sh',
      ['-c', 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest >/dev/null'],
      { asTestUser: false },
    );
  }
}
