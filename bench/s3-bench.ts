// Benchmark: BACKUP and RESTORE into a real S3 server (Ceph radosgw), pgbart against pgBackRest's repo1-type=s3.

/**
 * Object-storage benchmark: part of `npm run bench` (BENCH_PARTS=s3; bench.ts calls {@link s3Bench} on its loaded
 * cluster). One radosgw (bluestore on a sparse file, so RAM stays bounded; https with a self-signed certificate,
 * which pgBackRest insists on) serves two buckets. On the same cluster, in the same run, it times a full tar + lz4
 * BACKUP with 2 threads into the bucket and its RESTORE with 2 workers, against `pgbackrest backup` (process-max 2,
 * lz4, repo1-type=s3) and `pgbackrest restore`. Page cache warm, best of BENCH_S3_RUNS (default 2); results in
 * bench/results/<date>-s3.md.
 */
import { chownSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { backupIdFrom, type BackupFixture } from '../test/harness/backup-fixture.js';
import { serverSection } from '../test/harness/bart.js';
import { REPO_ROOT } from '../test/harness/pg-binaries.js';
import { removeTree, runOk, testUserIds } from '../test/harness/os.js';
import { TestS3 } from '../test/harness/s3.js';
import { BENCH, machineDescription, timed, type BenchData } from './bench-data.js';

const RUNS = Number(process.env.BENCH_S3_RUNS ?? 2);

interface Row {
  label: string;
  pgbart?: number;
  pgbackrest?: number;
}

/** Best (lowest) of `runs` timings of `fn`. */
async function best(runs: number, fn: () => Promise<unknown>): Promise<number> {
  let min = Infinity;
  for (let i = 0; i < runs; i++) min = Math.min(min, await timed(fn));
  return min;
}

/** Times BACKUP and RESTORE through S3 against pgBackRest on the loaded cluster of `fx`; writes <date>-s3.md. */
export async function s3Bench(fx: BackupFixture, work: string, data: BenchData): Promise<void> {
  const ids = testUserIds();
  if (!ids) throw new Error('run the benchmark as root (clusters run as the postgres user)');
  const s3 = await TestS3.start({ tls: true, store: 'bluestore' });
  try {
    await s3.createBucket('pgbart-bench');
    await s3.createBucket('pgbackrest-bench');
    const rows: Row[] = [];
    const server = 'pgs3';
    // A second section for the same cluster, its repository in the bucket; the WAL the backup needs is streamed.
    const base = readFileSync(fx.setup.configPath, 'utf8');
    fx.setup.writeConfig(
      base +
        serverSection(fx.cluster, server, {
          repository: 's3',
          s3_endpoint: s3.endpoint,
          s3_region: 'us-east-1',
          s3_bucket: 'pgbart-bench',
          s3_prefix: 'bench',
          s3_uri_style: 'path',
          s3_verify_tls: 'disabled',
          s3_key: s3.accessKey,
          s3_key_secret: s3.secretKey,
          xlog_method: 'stream',
        }),
    );
    const target = join(work, 's3-restored');
    let lastId = '';
    const backup = await best(RUNS, async () => {
      const r = await fx.setup.bart(['BACKUP', '-s', server, '-F', 't', '--compress', 'lz4', '--thread-count', '2']);
      if (r.code !== 0) throw new Error(`bart BACKUP into S3 failed: ${r.stderr}`);
      lastId = backupIdFrom(r.stdout);
    });
    const restore = await best(RUNS, async () => {
      removeTree(target);
      const r = await fx.setup.bart([
        'RESTORE',
        '-s',
        server,
        '-i',
        lastId,
        '-p',
        target,
        '-w',
        '2',
        '--target-immediate',
      ]);
      if (r.code !== 0) throw new Error(`bart RESTORE from S3 failed: ${r.stderr}`);
    });
    removeTree(target);
    const pgbartRow: Row[] = [
      { label: 'full backup, tar + lz4, 2 processes', pgbart: backup },
      { label: 'restore of it, 2 processes', pgbart: restore },
    ];
    rows.push(...pgbartRow);

    if (!BENCH.onlyPgbart) {
      const dir = join(work, 'pgbackrest-s3');
      mkdirSync(dir, { recursive: true });
      chownSync(dir, ids.uid, ids.gid);
      const conf = join(dir, 'pgbackrest.conf');
      const endpoint = new URL(s3.endpoint);
      writeFileSync(
        conf,
        `[global]\nrepo1-type=s3\nrepo1-path=/bench\nrepo1-s3-bucket=pgbackrest-bench\nrepo1-s3-endpoint=${endpoint.hostname}\n` +
          `repo1-storage-port=${endpoint.port}\nrepo1-s3-region=us-east-1\nrepo1-s3-key=${s3.accessKey}\nrepo1-s3-key-secret=${s3.secretKey}\n` +
          `repo1-s3-uri-style=path\nrepo1-storage-verify-tls=n\nlog-level-console=warn\nlog-path=${dir}\nlock-path=${dir}\n` +
          `start-fast=y\narchive-check=n\ncompress-type=lz4\n\n` +
          `[bench]\npg1-path=${fx.cluster.dataDir}\npg1-port=${fx.cluster.port}\npg1-socket-path=${fx.cluster.baseDir}\npg1-user=postgres\n`,
        { mode: 0o600 },
      );
      chownSync(conf, ids.uid, ids.gid);
      const pgbackrest = (args: string[]) => runOk('pgbackrest', [`--config=${conf}`, '--stanza=bench', ...args]);
      await pgbackrest(['stanza-create']);
      rows[0]!.pgbackrest = await best(RUNS, () => pgbackrest(['--process-max=2', '--type=full', 'backup']));
      rows[1]!.pgbackrest = await best(RUNS, async () => {
        removeTree(target);
        mkdirSync(target, { mode: 0o700 });
        chownSync(target, ids.uid, ids.gid);
        await pgbackrest(['--process-max=2', `--pg1-path=${target}`, '--type=immediate', 'restore']);
      });
      removeTree(target);
    }

    const date = new Date().toISOString().slice(0, 10);
    const ratio = (r: Row) => (r.pgbart && r.pgbackrest ? (r.pgbart / r.pgbackrest).toFixed(2) : '—');
    const lines = [
      `# Object storage benchmark, ${date}`,
      '',
      `PostgreSQL ${BENCH.version}; cluster ${(data.dbBytes / 2 ** 30).toFixed(2)} GB = pgbench -i -s ${BENCH.scale} + ${data.randomMb} MB of random bytea; ` +
        `one Ceph radosgw 16.2 (bluestore on a sparse file, https, self-signed) on 127.0.0.1, sharing the machine; ${machineDescription()}. ` +
        `Best of ${RUNS}; page cache warm. pgbart: bart BACKUP -F t --compress lz4 --thread-count 2 (SHA-256 of every file, ` +
        `Content-MD5 on every upload) and RESTORE -w 2; pgBackRest: repo1-type=s3, compress-type=lz4, process-max=2.`,
      '',
      '| operation | pgbart (s) | pgBackRest (s) | pgbart / pgBackRest |',
      '|---|---:|---:|---:|',
      ...rows.map(
        (r) => `| ${r.label} | ${r.pgbart?.toFixed(2) ?? '—'} | ${r.pgbackrest?.toFixed(2) ?? '—'} | ${ratio(r)} |`,
      ),
      '',
    ];
    const file = join(REPO_ROOT, 'bench', 'results', `${date}-s3.md`);
    writeFileSync(file, lines.join('\n'));
    console.log(lines.join('\n'));
    console.log(`written ${file}`);
  } finally {
    await s3.stop();
  }
}
