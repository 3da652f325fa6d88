/**
 * npm run bench — times pgbart against pg_basebackup and pgbackrest on the same cluster in the same
 * run, and writes bench/results/<date>-backup.md.
 *
 * Environment: BENCH_SCALE (pgbench scale, default 100 ≈ 1.5 GB, plus the same size of random
 * data), BENCH_PG (major version, default 15), BENCH_ONLY=pgbart to skip the peers.
 */
import { execFileSync } from 'node:child_process';
import { chownSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createBackupFixture, backupIdFrom, type BackupFixture } from '../test/harness/backup-fixture.js';
import { pgbenchInit } from '../test/harness/load.js';
import { clientTool, REPO_ROOT } from '../test/harness/pg-binaries.js';
import { makeTempDir, removeTree, runOk, testUserIds } from '../test/harness/os.js';

const SCALE = Number(process.env.BENCH_SCALE ?? 100);
const VERSION = Number(process.env.BENCH_PG ?? 15);
const ONLY_PGBART = process.env.BENCH_ONLY === 'pgbart';

interface Row {
  label: string;
  pgbart?: number;
  pgbartRss?: number;
  pgbartSize?: number;
  basebackup?: number;
  pgbackrest?: number;
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

function du(path: string): number {
  return Number(execFileSync('du', ['-sb', path], { encoding: 'utf8' }).split('\t')[0]);
}

async function main(): Promise<void> {
  if (!testUserIds()) throw new Error('run the benchmark as root (clusters run as the postgres user)');
  console.log(`pgbart benchmark: PostgreSQL ${VERSION}, pgbench scale ${SCALE} plus the same size of random data`);
  const fx: BackupFixture = await createBackupFixture({
    version: VERSION,
    conf: { max_wal_size: '4GB', checkpoint_timeout: '30min', shared_buffers: '256MB' },
  });
  const work = makeTempDir('bench');
  try {
    const t = await timed(() => pgbenchInit(fx.cluster, SCALE));
    const pgbenchBytes = Number(await fx.cluster.scalar('SELECT pg_database_size(current_database())'));
    console.log(`pgbench -i -s ${SCALE}: ${t.toFixed(1)} s, ${(pgbenchBytes / 2 ** 20).toFixed(0)} MB`);
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
    console.log(`cluster size: ${(dbBytes / 2 ** 30).toFixed(2)} GB`);

    // Warm the page cache, and measure the floor: reading every file once.
    await runOk('sh', ['-c', `tar cf - -C '${fx.cluster.dataDir}' . | cat > /dev/null`]);
    const rawRead = await timed(() => runOk('sh', ['-c', `tar cf - -C '${fx.cluster.dataDir}' . | cat > /dev/null`]));
    console.log(`raw read (tar cf - | cat): ${rawRead.toFixed(2)} s`);

    const bart = async (args: string[]) => {
      const r = await fx.setup.bart(['BACKUP', '-s', fx.server, ...args]);
      if (r.code !== 0) throw new Error(`bart ${args.join(' ')} failed: ${r.stderr}`);
      const id = backupIdFrom(r.stdout);
      const size = du(fx.backupDir(id));
      const log = readFileSync(fx.setup.logfile, 'utf8');
      const rss = [...log.matchAll(/BACKUP: peak RSS ([\d.]+) MB/g)].pop();
      removeTree(fx.backupDir(id));
      return { size, rss: rss ? Number(rss[1]) : undefined };
    };
    const pgbPath = clientTool('pg_basebackup');
    const basebackup = async (args: string[]) => {
      const dir = join(work, 'pg_basebackup');
      await runOk(pgbPath, ['-h', fx.cluster.host, '-p', String(fx.cluster.port), '-U', 'postgres', '-D', dir, '-X', 'fetch', '-c', 'fast', '--no-manifest', ...args]);
      removeTree(dir);
    };
    // pgbackrest: its own repository and stanza, local, same cluster.
    const repo = join(work, 'pgbackrest-repo');
    mkdirSync(repo);
    const ids = testUserIds()!;
    chownSync(repo, ids.uid, ids.gid);
    const conf = join(work, 'pgbackrest.conf');
    writeFileSync(conf, `[global]\nrepo1-path=${repo}\nlog-level-console=warn\nlog-path=${work}\nlock-path=${work}\nstart-fast=y\narchive-check=n\n\n[bench]\npg1-path=${fx.cluster.dataDir}\npg1-port=${fx.cluster.port}\npg1-socket-path=${fx.cluster.baseDir}\npg1-user=postgres\n`);
    chownSync(conf, ids.uid, ids.gid);
    chownSync(work, ids.uid, ids.gid);
    const pgbackrest = async (args: string[]) => runOk('pgbackrest', [`--config=${conf}`, '--stanza=bench', ...args]);
    if (!ONLY_PGBART) await pgbackrest(['stanza-create']);
    const pgbackrestBackup = async (compress: string, processes: number) => {
      await pgbackrest([`--process-max=${processes}`, `--compress-type=${compress}`, '--type=full', 'backup']);
      await pgbackrest(['--repo1-retention-full=1', 'expire']).catch(() => undefined);
      removeTree(join(repo, 'backup'));
      mkdirSync(join(repo, 'backup', 'bench'), { recursive: true });
      await runOk('chown', ['-R', `${ids.uid}:${ids.gid}`, repo], { asTestUser: false });
      await pgbackrest(['stanza-create']).catch(() => undefined);
    };

    const rows: Row[] = [];
    const cases: { label: string; bart: string[]; basebackup: string[]; pgbackrest: string }[] = [
      { label: 'plain, uncompressed', bart: ['-F', 'p'], basebackup: ['-Fp'], pgbackrest: 'none' },
      { label: 'tar + gzip', bart: ['-F', 't', '-z'], basebackup: ['-Ft', '-z'], pgbackrest: 'gz' },
      { label: 'tar + lz4', bart: ['-F', 't', '--compress', 'lz4'], basebackup: ['-Ft', '--compress=client-lz4'], pgbackrest: 'lz4' },
      { label: 'tar + zstd', bart: ['-F', 't', '--compress', 'zstd'], basebackup: ['-Ft', '--compress=client-zstd'], pgbackrest: 'zst' },
      { label: 'tar, uncompressed', bart: ['-F', 't'], basebackup: ['-Ft'], pgbackrest: 'none' },
    ];
    const basebackupTimes = new Map<string, number>();
    for (const threads of [1, 2]) {
      for (const c of cases) {
        const row: Row = { label: `${c.label}, ${threads} thread${threads > 1 ? 's' : ''}` };
        let info: { size: number; rss: number | undefined } = { size: 0, rss: undefined };
        row.pgbart = await timed(async () => {
          info = await bart([...c.bart, '--thread-count', String(threads)]);
        });
        row.pgbartSize = info.size;
        row.pgbartRss = info.rss;
        if (!ONLY_PGBART) {
          // pg_basebackup has no parallelism: one measurement serves both thread rows.
          if (!basebackupTimes.has(c.label)) basebackupTimes.set(c.label, await timed(() => basebackup(c.basebackup)));
          row.basebackup = basebackupTimes.get(c.label)!;
          row.pgbackrest = await timed(() => pgbackrestBackup(c.pgbackrest, threads));
        }
        rows.push(row);
        const ratio = (a?: number, b?: number) => (a && b ? (a / b).toFixed(2) : '-');
        console.log(`${row.label.padEnd(34)} pgbart ${row.pgbart.toFixed(2)} s (${((row.pgbartSize ?? 0) / 2 ** 20).toFixed(0)} MB, RSS ${row.pgbartRss ?? '?'} MB)  pg_basebackup ${row.basebackup?.toFixed(2) ?? '-'} s (x${ratio(row.pgbart, row.basebackup)})  pgbackrest ${row.pgbackrest?.toFixed(2) ?? '-'} s (x${ratio(row.pgbart, row.pgbackrest)})`);
      }
    }

    const date = new Date().toISOString().slice(0, 10);
    const cpu = readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*: (.*)/)?.[1] ?? 'unknown CPU';
    const fmt = (v?: number) => (v === undefined ? '-' : v.toFixed(2));
    const ratio = (a?: number, b?: number) => (a && b ? (a / b).toFixed(2) : '-');
    const lines = [
      `# Backup benchmark, ${date}`,
      '',
      `PostgreSQL ${VERSION}; cluster ${(dbBytes / 2 ** 30).toFixed(2)} GB = pgbench -i -s ${SCALE} (${(pgbenchBytes / 2 ** 20).toFixed(0)} MB) + ${randomMb} MB of random bytea; ` +
        `warm page cache; ${execFileSync('nproc', { encoding: 'utf8' }).trim()} cores (${cpu}); Node ${process.version}; catalog and cluster on the same disk.`,
      `Raw read of the data directory (\`tar cf - | cat\`): **${rawRead.toFixed(2)} s**.`,
      '',
      'pg_basebackup (Debian 15, `-X fetch -c fast`) is single-threaded: the same measurement is shown in both thread rows. pgbackrest (Debian) runs with `--process-max` = threads, `start-fast`, `archive-check=n`. Ratios below 1.0 mean pgbart is faster.',
      '',
      '| case | pgbart (s) | size (MB) | peak RSS (MB) | pg_basebackup (s) | pgbart / pg_basebackup | pgbackrest (s) | pgbart / pgbackrest |',
      '|---|---:|---:|---:|---:|---:|---:|---:|',
      ...rows.map((r) => `| ${r.label} | ${fmt(r.pgbart)} | ${((r.pgbartSize ?? 0) / 2 ** 20).toFixed(0)} | ${r.pgbartRss ?? '-'} | ${fmt(r.basebackup)} | ${ratio(r.pgbart, r.basebackup)} | ${fmt(r.pgbackrest)} | ${ratio(r.pgbart, r.pgbackrest)} |`),
      '',
    ];
    mkdirSync(join(REPO_ROOT, 'bench', 'results'), { recursive: true });
    const out = join(REPO_ROOT, 'bench', 'results', `${date}-backup${ONLY_PGBART ? '-pgbart-only' : ''}.md`);
    writeFileSync(out, lines.join('\n'));
    console.log(`results written to ${out}`);
  } finally {
    await fx.destroy();
    removeTree(work);
  }
}

await main();
