// Benchmark: WAL archiving throughput for a burst of segments — pgbart sync and async against pgbackrest archive-push sync and async.

/**
 * Archiving benchmark: part of `npm run bench` (BENCH_PARTS=archive). For each of four archive_commands — pgbart's
 * ARCHIVE-PUSH as INIT writes it with archive_async off and on (archive_async_workers = 2), and `pgbackrest
 * archive-push` without and with `archive-async=y process-max=2` — a fresh cluster (archive_mode on) takes a burst of
 * BENCH_ARCHIVE_SEGMENTS (default 500) segments, each one small insert and `pg_switch_wal()`, as fast as one client
 * issues them. Timed from the burst's start until pg_stat_archiver counts every segment archived (PostgreSQL has heard
 * success for all of them) and the repository holds the last one. pgBackRest stores uncompressed
 * (`compress-type=none`), as pgbart does. Results in bench/results/<date>-archive.md.
 */
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createBartSetup, serverSection, type BartSetup } from '../test/harness/bart.js';
import { TestCluster } from '../test/harness/cluster.js';
import { makeTempDir, removeTree } from '../test/harness/os.js';
import { REPO_ROOT } from '../test/harness/pg-binaries.js';
import { BENCH, machineDescription, setupPgbackrestFor, until } from './bench-data.js';

const SEGMENTS = Number(process.env.BENCH_ARCHIVE_SEGMENTS ?? 500);

interface Row {
  label: string;
  seconds: number;
  burstSeconds: number;
}

/** Runs the burst on `cluster` and waits until every segment is archived and `present(last)`; returns seconds. */
async function burst(
  cluster: TestCluster,
  present: (last: string) => boolean,
): Promise<{ total: number; burst: number }> {
  await cluster.query('CREATE TABLE IF NOT EXISTS burst (i int)');
  await cluster.switchWal();
  await until(
    'the archiver to settle',
    async () => {
      const r = await cluster.query<{ ready: string }>(
        "SELECT count(*)::text AS ready FROM pg_ls_dir('pg_wal/archive_status') f WHERE f LIKE '%.ready'",
      );
      return r[0]!.ready === '0';
    },
    600_000,
  );
  const before = Number(await cluster.scalar('SELECT archived_count FROM pg_stat_archiver'));
  const t0 = process.hrtime.bigint();
  let last = '';
  for (let i = 0; i < SEGMENTS; i++) {
    const rows = await cluster.query<{ w: string }>(
      `INSERT INTO burst VALUES (${i}); SELECT pg_walfile_name(pg_switch_wal()) AS w`,
    );
    last = rows[0]!.w;
  }
  const burstSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
  await until(
    'the burst to be archived',
    async () =>
      Number(await cluster.scalar('SELECT archived_count FROM pg_stat_archiver')) - before >= SEGMENTS && present(last),
    3_600_000,
  );
  return { total: Number(process.hrtime.bigint() - t0) / 1e9, burst: burstSeconds };
}

/** A cluster for one mode: archive_mode on, room for the burst without checkpoints in the way. */
function newCluster(): Promise<TestCluster> {
  return TestCluster.create({
    version: BENCH.version,
    conf: { archive_mode: 'on', max_wal_size: '16GB', checkpoint_timeout: '30min', fsync: 'on' },
  });
}

async function pgbartMode(async: boolean): Promise<Row> {
  const cluster = await newCluster();
  let setup: BartSetup | undefined;
  try {
    setup = createBartSetup();
    setup.writeConfig(
      `${readFileSync(setup.configPath, 'utf8')}\n${serverSection(cluster, 'arch', async ? { archive_async: 'on', archive_async_workers: '2' } : {})}`,
    );
    const init = await setup.bart(['INIT', '-s', 'arch']);
    if (init.code !== 0) throw new Error(`INIT failed: ${init.stderr}`);
    await cluster.restart();
    const archive = join(setup.backupPath, 'arch', 'archived_wals');
    const r = await burst(cluster, (last) => existsSync(join(archive, last)));
    const stored = readdirSync(archive).filter((n) => /^[0-9A-F]{24}$/.test(n)).length;
    if (stored < SEGMENTS) throw new Error(`only ${stored} segments in ${archive}`);
    return {
      label: `pgbart ARCHIVE-PUSH, archive_async = ${async ? 'on (2 workers)' : 'off'}`,
      seconds: r.total,
      burstSeconds: r.burst,
    };
  } finally {
    await cluster.destroy();
    if (setup) {
      // The archiver exits on its own when idle; wait for it rather than pull the spool from under it.
      await new Promise((r) => setTimeout(r, async ? 11_000 : 0));
      setup.cleanup();
    }
  }
}

async function pgbackrestMode(async: boolean): Promise<Row> {
  const work = makeTempDir('archive-bench');
  const cluster = await newCluster();
  try {
    const { repo, conf } = await setupPgbackrestFor(
      cluster,
      work,
      `log-level-file=off\ncompress-type=none\narchive-check=n\n${async ? 'archive-async=y\nprocess-max=2\n' : ''}`,
    );
    await cluster.query(
      `ALTER SYSTEM SET archive_command = 'pgbackrest --config=${conf} --stanza=bench archive-push %p'`,
    );
    await cluster.reload();
    const archiveRoot = join(repo, 'archive', 'bench');
    const present = (last: string): boolean => {
      if (!existsSync(archiveRoot)) return false;
      for (const id of readdirSync(archiveRoot)) {
        const dir = join(archiveRoot, id, last.slice(0, 16));
        if (existsSync(dir) && readdirSync(dir).some((n) => n.startsWith(last))) return true;
      }
      return false;
    };
    const r = await burst(cluster, present);
    return {
      label: `pgbackrest archive-push${async ? ', archive-async=y process-max=2' : ''}`,
      seconds: r.total,
      burstSeconds: r.burst,
    };
  } finally {
    await cluster.destroy();
    removeTree(work);
  }
}

/** Runs the four modes one after the other; writes <date>-archive.md. */
export async function archiveBench(): Promise<void> {
  const rows: Row[] = [];
  const modes: [string, () => Promise<Row>][] = [
    ['pgbart sync', () => pgbartMode(false)],
    ['pgbart async', () => pgbartMode(true)],
    ...(BENCH.onlyPgbart
      ? []
      : ([
          ['pgbackrest sync', () => pgbackrestMode(false)],
          ['pgbackrest async', () => pgbackrestMode(true)],
        ] as [string, () => Promise<Row>][])),
  ];
  // BENCH_ARCHIVE_MODES (e.g. `pgbart async`): run only these rows, into <date>-archive-partial.md.
  const only = process.env.BENCH_ARCHIVE_MODES?.split(',').map((m) => m.trim());
  for (const [name, fn] of modes) {
    if (only !== undefined && !only.includes(name)) continue;
    console.log(`archive benchmark: ${name}, ${SEGMENTS} segments`);
    const row = await fn();
    console.log(
      `  ${row.seconds.toFixed(1)} s (${(SEGMENTS / row.seconds).toFixed(1)} segments/s; the burst itself took ${row.burstSeconds.toFixed(1)} s)`,
    );
    rows.push(row);
  }
  const pgbartSync = rows.find((r) => r.label.endsWith('= off'));
  const pgbartAsync = rows.find((r) => r.label.includes('= on'));
  const pgbrSync = rows.find((r) => r.label === 'pgbackrest archive-push');
  const pgbrAsync = rows.find((r) => r.label.startsWith('pgbackrest archive-push,'));
  const ratio = (a: Row | undefined, b: Row | undefined) => (a && b ? (a.seconds / b.seconds).toFixed(2) : '—');
  const date = new Date().toISOString().slice(0, 10);
  const lines = [
    `# Archiving benchmark, ${date}`,
    '',
    `PostgreSQL ${BENCH.version}, 16 MB segments; a burst of ${SEGMENTS} segments, each \`INSERT\` of one row and \`pg_switch_wal()\` ` +
      'from one client as fast as it goes; timed from the start of the burst until pg_stat_archiver counts all of them archived and the ' +
      'repository holds the last. A fresh cluster per row (fsync on, max_wal_size 16GB). pgbart: the archive_command INIT writes ' +
      '(POSIX repository on the same disk). pgBackRest 2.x (Debian): `archive-push` with `compress-type=none`, alone and with ' +
      '`archive-async=y process-max=2`. Machine: ' +
      `${machineDescription()} (the load average says whether other work shared it): compare the rows with each other, not with other runs.`,
    '',
    '| archive_command | seconds | segments/s | burst alone (s) |',
    '|---|---:|---:|---:|',
    ...rows.map(
      (r) =>
        `| ${r.label} | ${r.seconds.toFixed(1)} | ${(SEGMENTS / r.seconds).toFixed(1)} | ${r.burstSeconds.toFixed(1)} |`,
    ),
    '',
    `Ratios (time, lower is better for pgbart): async / sync ${ratio(pgbartAsync, pgbartSync)}; ` +
      `pgbart async / pgBackRest async ${ratio(pgbartAsync, pgbrAsync)}; pgbart sync / pgBackRest sync ${ratio(pgbartSync, pgbrSync)}.`,
    '',
  ];
  const file = join(REPO_ROOT, 'bench', 'results', `${date}-archive${only !== undefined ? '-partial' : ''}.md`);
  writeFileSync(file, lines.join('\n'));
  console.log(lines.join('\n'));
  console.log(`written ${file}`);
}
