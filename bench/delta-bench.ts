// Benchmark: RESTORE --delta after 1% drift against a full restore and pgbackrest restore --delta.

/**
 * Delta restore benchmark: part of `npm run bench` (part `delta`; bench.ts calls {@link deltaBench} on its
 * loaded cluster). A copy restored from a backup drifts by 1% of the cluster's bytes (one 8 KB block
 * overwritten in each of the relation files picked, the same files in every copy); then, on the same data:
 * pgbart RESTORE --delta over it, a full pgbart RESTORE into an empty directory, and `pgbackrest restore
 * --delta` over a pgbackrest-restored copy changed the same way. Writes bench/results/<date>-delta.md.
 *
 * Environment: as bench.ts (BENCH_SCALE, BENCH_PG, BENCH_ONLY=pgbart to skip pgbackrest).
 */
import { randomBytes } from 'node:crypto';
import { chownSync, closeSync, mkdirSync, openSync, readdirSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { backupIdFrom, type BackupFixture } from '../test/harness/backup-fixture.js';
import { removeTree, testUserIds } from '../test/harness/os.js';
import { BENCH, machineDescription, setupPgbackrest, timed, writeResults, type BenchData } from './bench-data.js';

interface Row {
  label: string;
  seconds: number;
  note?: string;
}

/** Relation files under `dir`/base, by path (the same list in every copy of the cluster). */
function relationFiles(dir: string): { path: string; size: number }[] {
  const out: { path: string; size: number }[] = [];
  for (const db of readdirSync(join(dir, 'base')).sort()) {
    for (const name of readdirSync(join(dir, 'base', db)).sort()) {
      if (!/^\d+(\.\d+)?$/.test(name)) continue;
      const size = statSync(join(dir, 'base', db, name)).size;
      if (size >= 8192) out.push({ path: join('base', db, name), size });
    }
  }
  return out;
}

/**
 * Picks relation files spread over the cluster until they hold `share` of `dbBytes`: the files a
 * 1% change touches (a tool that works file by file, as both do, rewrites exactly these).
 */
function pickDrift(dir: string, dbBytes: number, share: number): string[] {
  const files = relationFiles(dir);
  const picked: string[] = [];
  let bytes = 0;
  // Every 7th file first, then the others: spread, not just the first database's.
  const order = [...files.filter((_, i) => i % 7 === 0), ...files.filter((_, i) => i % 7 !== 0)];
  for (const f of order) {
    if (bytes >= dbBytes * share) break;
    if (bytes + f.size > dbBytes * share * 1.5) continue;
    picked.push(f.path);
    bytes += f.size;
  }
  return picked;
}

/** Overwrites block 0 of each file with the same random bytes in every copy. */
function drift(dir: string, files: string[], block: Buffer): void {
  for (const f of files) {
    const fd = openSync(join(dir, f), 'r+');
    try {
      writeSync(fd, block, 0, block.length, 0);
    } finally {
      closeSync(fd);
    }
  }
}

/** Times delta and full restores of pgbart and pgbackrest on `fx`'s (loaded) cluster, working under `work`. */
export async function deltaBench(fx: BackupFixture, work: string, data: BenchData): Promise<void> {
  const ids = testUserIds();
  if (!ids) throw new Error('run the benchmark as root (clusters run as the postgres user)');
  const rows: Row[] = [];
  const report = (row: Row) => {
    rows.push(row);
    console.log(`${row.label.padEnd(56)} ${row.seconds.toFixed(2)} s${row.note ? `  (${row.note})` : ''}`);
  };
  const block = randomBytes(8192);
  const b = await fx.setup.bart(['BACKUP', '-s', fx.server, '-F', 't', '--compress', 'lz4', '--thread-count', '2']);
  if (b.code !== 0) throw new Error(`bart BACKUP failed: ${b.stderr}`);
  const id = backupIdFrom(b.stdout);
  const bart = async (path: string, extra: string[]) => {
    const args = ['RESTORE', '-s', fx.server, '-i', id, '-p', path, '-w', '2', '--target-immediate', ...extra];
    const r = await fx.setup.bart(args);
    if (r.code !== 0) throw new Error(`bart RESTORE ${extra.join(' ')} failed: ${r.stderr}`);
    return r.stdout;
  };

  const copy = join(work, 'delta-copy');
  const fresh = join(work, 'delta-fresh');
  await bart(copy, []);
  const files = pickDrift(copy, data.dbBytes, 0.01);
  drift(copy, files, block);
  const fullSeconds = await timed(() => bart(fresh, []));
  report({ label: 'pgbart RESTORE (full, empty directory), 2 workers', seconds: fullSeconds });
  removeTree(fresh);
  let summary = '';
  const deltaSeconds = await timed(async () => {
    summary = /delta restore: [^;]*/.exec(await bart(copy, ['--delta']))?.[0] ?? '';
  });
  report({ label: 'pgbart RESTORE --delta, 2 workers', seconds: deltaSeconds, note: summary });
  removeTree(copy);

  if (!BENCH.onlyPgbart) {
    const { run: pgbackrest } = await setupPgbackrest(fx, join(work, 'pgbackrest-delta'));
    await pgbackrest(['--process-max=2', '--compress-type=lz4', '--type=full', 'backup']);
    const restore = (path: string, extra: string[]) =>
      pgbackrest(['--process-max=2', `--pg1-path=${path}`, '--type=immediate', ...extra, 'restore']);
    for (const p of [copy, fresh]) {
      mkdirSync(p, { mode: 0o700 });
      chownSync(p, ids.uid, ids.gid);
    }
    await restore(copy, []);
    drift(copy, files, block);
    const fullRestore = await timed(() => restore(fresh, []));
    report({ label: 'pgbackrest restore (full, empty directory), process-max 2', seconds: fullRestore });
    removeTree(fresh);
    const deltaRestore = await timed(() => restore(copy, ['--delta']));
    report({ label: 'pgbackrest restore --delta, process-max 2', seconds: deltaRestore });
    removeTree(copy);
  }
  removeTree(fx.backupDir(id));

  const date = new Date().toISOString().slice(0, 10);
  const lines = [
    `# Delta restore benchmark, ${date}`,
    '',
    `PostgreSQL ${BENCH.version}; cluster ${(data.dbBytes / 2 ** 30).toFixed(2)} GB ` +
      `(pgbench -i -s ${BENCH.scale} plus ` +
      `${data.randomMb} MB of random bytea); ${machineDescription()}.`,
    '',
    `A restored copy drifted: block 0 of ${files.length} relation files (1% of the cluster's bytes) overwritten. ` +
      'pgbart: tar + lz4 backup, `-w 2`, `--target-immediate`; pgbackrest (Debian): lz4, `--process-max=2`, ' +
      '`--type=immediate`. Both compare files by checksum and rewrite whole files that differ.',
    '',
    '| restore | seconds | notes |',
    '|---|---:|---|',
    ...rows.map((r) => `| ${r.label} | ${r.seconds.toFixed(2)} | ${r.note ?? ''} |`),
    '',
  ];
  writeResults('delta', lines);
}
