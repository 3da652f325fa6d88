// Benchmark: a point-in-time restore replaying gigabytes of archived WAL — pgbart ARCHIVE-GET with prefetch against pgBackRest's async archive-get.

/**
 * PITR replay benchmark: part of `npm run bench` (BENCH_PARTS=replay), issue 18 item 5. One cluster (pgbench scale
 * 10) archives every segment into both a pgbart catalog (the archive_command INIT writes, `archive_async = on`) and a
 * pgBackRest repository (`archive-push`, `archive-async=y process-max=2`, uncompressed like pgbart); both tools take
 * a full backup; then BENCH_REPLAY_GB (default 5) GB of WAL are written (bulk inserts, truncations and pgbench
 * transactions, checkpoints every 30 s so full-page images are part of it) and a restore point ends it. Each tool then
 * restores its backup with `recovery_target_name` = that point and `recovery_target_action = promote`, and the
 * restored cluster is started: timed are the restore command, and the replay from the start of the cluster until it
 * is promoted (every segment fetched by the tool's restore_command). Both restored clusters must hold the same data.
 * Results in bench/results/<date>-replay.md.
 */
import { chownSync, existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createBartSetup, serverSection, type BartSetup } from '../test/harness/bart.js';
import { TestCluster } from '../test/harness/cluster.js';
import { pgbenchInit, pgbenchRun } from '../test/harness/load.js';
import { makeTempDir, removeTree, testUserIds } from '../test/harness/os.js';
import { BENCH, machineDescription, setupPgbackrestFor, timed, until, writeResults } from './bench-data.js';

const WAL_BYTES = Number(process.env.BENCH_REPLAY_GB ?? 5) * 2 ** 30;
const SERVER = 'replay';
const RESTORE_POINT = 'bench_replay_end';

interface ReplayRow {
  tool: string;
  restoreSeconds: number;
  replaySeconds: number;
  fingerprint: string;
}

/** What both restored clusters must agree on: row counts and sums of the tables the load wrote. */
async function fingerprint(cluster: TestCluster): Promise<string> {
  const rows = await cluster.query<{ f: string }>(
    `SELECT (SELECT count(*) FROM bulk) || '/' || (SELECT coalesce(sum(id), 0) FROM bulk) || '/' ||
            (SELECT sum(abalance) FROM pgbench_accounts) || '/' || (SELECT count(*) FROM pgbench_history) AS f`,
  );
  return rows[0]!.f;
}

/** Writes at least `bytes` of WAL: bulk inserts (truncated every ~1 GB), with pgbench transactions in between. */
async function writeWal(cluster: TestCluster, bytes: number): Promise<number> {
  const start = String(await cluster.scalar('SELECT pg_current_wal_lsn()'));
  const written = async () =>
    Number(await cluster.scalar('SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)', [start]));
  await cluster.query('CREATE TABLE bulk (id bigint, payload text)');
  let sinceTruncate = 0;
  for (let round = 0; ; round++) {
    const before = await written();
    if (before >= bytes) return before;
    if (sinceTruncate > 2 ** 30) {
      await cluster.query('TRUNCATE bulk');
      sinceTruncate = 0;
    }
    await cluster.query(
      `INSERT INTO bulk SELECT g, md5(g::text) || md5((g + ${round})::text) FROM generate_series(1, 400000) g`,
    );
    if (round % 8 === 7) await pgbenchRun(cluster, 3);
    sinceTruncate += (await written()) - before;
  }
}

/** Starts a restored data directory and times it until it is promoted; returns seconds and the data's fingerprint. */
async function replay(dataDir: string): Promise<{ seconds: number; fingerprint: string }> {
  let cluster: TestCluster | undefined;
  try {
    const t0 = process.hrtime.bigint();
    // archive_mode off: the promoted copy must not archive its new timeline into the repositories under test.
    cluster = await TestCluster.create({ version: BENCH.version, dataDir, conf: { archive_mode: 'off' } });
    const c = cluster;
    await until('the end of recovery', async () => (await c.scalar('SELECT pg_is_in_recovery()')) === false, 7_200_000);
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    return { seconds, fingerprint: await fingerprint(cluster) };
  } finally {
    await cluster?.destroy();
    removeTree(dataDir);
  }
}

/** Runs the benchmark; writes <date>-replay.md. */
export async function replayBench(): Promise<void> {
  const ids = testUserIds()!;
  const work = makeTempDir('replay-bench');
  chownSync(work, ids.uid, ids.gid);
  let setup: BartSetup | undefined;
  let source: TestCluster | undefined;
  try {
    source = await TestCluster.create({
      version: BENCH.version,
      conf: { archive_mode: 'on', max_wal_size: '1GB', checkpoint_timeout: '30s', fsync: 'on' },
    });
    await pgbenchInit(source, 10);

    // pgbart: INIT writes the archive_command (archive_async on: queued, pushed by its archiver, prefetched on GET).
    setup = createBartSetup();
    setup.writeConfig(
      `${readFileSync(setup.configPath, 'utf8')}\n${serverSection(source, SERVER, { archive_async: 'on', archive_async_workers: '2' })}`,
    );
    const init = await setup.bart(['INIT', '-s', SERVER]);
    if (init.code !== 0) throw new Error(`INIT failed: ${init.stderr}`);
    const pgbartCommand = String(await source.scalar('SHOW archive_command'));

    // pgBackRest: its own repository and spool, async both ways.
    const {
      repo,
      conf,
      run: pgbackrest,
    } = await setupPgbackrestFor(
      source,
      work,
      'log-level-file=off\ncompress-type=none\narchive-async=y\nprocess-max=2\nstart-fast=y\n',
    );

    // Every segment goes to both: pgbart's command first, then pgBackRest's.
    const both = `(${pgbartCommand}) && pgbackrest --config=${conf} --stanza=bench archive-push %p`;
    await source.query(`ALTER SYSTEM SET archive_command = '${both.replaceAll("'", "''")}'`);
    await source.restart();

    const backup = await setup.bart(['BACKUP', '-s', SERVER, '-Fp']);
    const id = /backup identifier: '(\d+)'/.exec(backup.stdout)?.[1];
    if (backup.code !== 0 || id === undefined) throw new Error(`pgbart BACKUP failed: ${backup.stderr}`);
    await pgbackrest(['backup', '--type=full']);

    console.log(`replay benchmark: writing ${(WAL_BYTES / 2 ** 30).toFixed(1)} GB of WAL`);
    const walBytes = await writeWal(source, WAL_BYTES);
    await source.query(`SELECT pg_create_restore_point('${RESTORE_POINT}')`);
    const last = await source.switchWal();
    const pgbartArchive = join(setup.backupPath, SERVER, 'archived_wals');
    const inPgbackrest = (): boolean => {
      const root = join(repo, 'archive', 'bench');
      if (!existsSync(root)) return false;
      return readdirSync(root).some((archiveId) => {
        const dir = join(root, archiveId, last.slice(0, 16));
        return existsSync(dir) && readdirSync(dir).some((n) => n.startsWith(last));
      });
    };
    await until(
      'both archives to hold the last segment',
      async () => existsSync(join(pgbartArchive, last)) && inPgbackrest(),
      3_600_000,
    );
    await source.destroy();
    source = undefined;

    const rows: ReplayRow[] = [];
    // A local restore from a directory archive: restore_command copies plain segments with sh, else ARCHIVE-GET
    // (archive_async on or off alike; its prefetch serves object-store and encrypted archives).
    const pgbartModes: [label: string, config: string][] = [
      ['pgbart (sh cp from the archive directory, ARCHIVE-GET fallback)', readFileSync(setup.configPath, 'utf8')],
    ];
    for (const [i, [tool, config]] of pgbartModes.entries()) {
      setup.writeConfig(config);
      const target = join(work, `pgbart-restored-${i}`);
      const restoreSeconds = await timed(async () => {
        const r = await setup!.bart([
          'RESTORE',
          '-s',
          SERVER,
          '-i',
          id,
          '-p',
          target,
          '-w',
          '2',
          '--target-name',
          RESTORE_POINT,
          '--target-action',
          'promote',
        ]);
        if (r.code !== 0) throw new Error(`pgbart RESTORE failed: ${r.stderr}`);
      });
      console.log(`  ${tool}: RESTORE ${restoreSeconds.toFixed(1)} s; replaying`);
      const r = await replay(target);
      rows.push({ tool, restoreSeconds, replaySeconds: r.seconds, fingerprint: r.fingerprint });
      console.log(`  replay ${r.seconds.toFixed(1)} s`);
    }

    if (!BENCH.onlyPgbart) {
      const target = join(work, 'pgbackrest-restored');
      mkdirSync(target, { mode: 0o700 });
      chownSync(target, ids.uid, ids.gid);
      const restoreSeconds = await timed(() =>
        pgbackrest([
          'restore',
          `--pg1-path=${target}`,
          '--type=name',
          `--target=${RESTORE_POINT}`,
          '--target-action=promote',
        ]),
      );
      console.log(`  pgbackrest restore ${restoreSeconds.toFixed(1)} s; replaying`);
      const r = await replay(target);
      rows.push({
        tool: 'pgBackRest (archive-get, archive-async=y process-max=2)',
        restoreSeconds,
        replaySeconds: r.seconds,
        fingerprint: r.fingerprint,
      });
      console.log(`  replay ${r.seconds.toFixed(1)} s`);
    }
    const differing = rows.filter((r) => r.fingerprint !== rows[0]!.fingerprint);
    if (differing.length > 0) {
      throw new Error(`the restored clusters differ: ${rows.map((r) => `${r.tool}: ${r.fingerprint}`).join('; ')}`);
    }

    const peer = rows.find((r) => r.tool.startsWith('pgBackRest'));
    const total = (r: ReplayRow) => r.restoreSeconds + r.replaySeconds;
    const segments = Math.ceil(walBytes / 2 ** 24);
    writeResults('replay', [
      `# PITR replay benchmark, ${new Date().toISOString().slice(0, 10)}`,
      '',
      `PostgreSQL ${BENCH.version}; ${(walBytes / 2 ** 30).toFixed(2)} GB of WAL (${segments} segments of 16 MB: bulk inserts, ` +
        'truncations, pgbench transactions, checkpoints every 30 s) after a full backup of a pgbench scale 10 cluster, archived ' +
        'into both repositories (uncompressed). Each tool restores its backup to the restore point made after the load ' +
        '(`recovery_target_action = promote`); "replay" runs from starting the restored cluster until it is promoted, ' +
        "every segment fetched by the tool's restore_command. Both restored clusters hold the same data " +
        `(${rows[0]!.fingerprint}). ${machineDescription()}.`,
      '',
      '| tool | restore (s) | replay (s) | replay MB/s | total (s) |',
      '|---|---:|---:|---:|---:|',
      ...rows.map(
        (r) =>
          `| ${r.tool} | ${r.restoreSeconds.toFixed(1)} | ${r.replaySeconds.toFixed(1)} | ${(walBytes / 2 ** 20 / r.replaySeconds).toFixed(0)} | ${(r.restoreSeconds + r.replaySeconds).toFixed(1)} |`,
      ),
      '',
      peer
        ? rows
            .filter((r) => r !== peer)
            .map(
              (r) =>
                `Ratio ${r.tool.split(' (')[0]} / pgBackRest: replay ${(r.replaySeconds / peer.replaySeconds).toFixed(2)}, ` +
                `total ${(total(r) / total(peer)).toFixed(2)}.`,
            )
            .join(' ')
        : 'pgBackRest not run (BENCH_ONLY=pgbart).',
      '',
    ]);
  } finally {
    await source?.destroy();
    // pgbart's archiver and prefetcher exit on their own when idle: let them, rather than pull the spool from under them.
    await new Promise((r) => setTimeout(r, 11_000));
    setup?.cleanup();
    removeTree(work);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await replayBench();
