// Benchmark: WAL decoding throughput of the scanner against pg_waldump --stats=record.

/**
 * Scanner benchmark: WAL decoding throughput of pgbart (CRC-32C verified) against
 * `pg_waldump --stats=record` on the same files in the same run, on two ranges of archived WAL:
 * one from pgbench with frequent checkpoints (mostly full-page images) and one from a bulk INSERT
 * of small rows (millions of small records). Writes bench/results/<date>-scanner.md.
 *
 *   node dist/bench/scanner-bench.js
 *
 * Environment: BENCH_WAL_MB (size of each range, default 1024), BENCH_WAL_DIR (keep/reuse the
 * generated WAL there instead of a temp directory), BENCH_RUNS (best of N, default 3),
 * BENCH_THREADS (worker threads of the parallel run, default min(4, cores)).
 *
 * The tools are measured in turns within each round (pg_waldump, then pgbart with 1 worker
 * thread, then with N, then the plain decode), so load from other work on a shared machine
 * falls on all of them alike; each keeps its best round.
 * PostgreSQL 15 is used because Debian's pg_waldump reads only version 15 WAL.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { withCluster, type TestCluster } from '../test/harness/cluster.js';
import { clientTool, REPO_ROOT } from '../test/harness/pg-binaries.js';
import { makeTempDir, removeTree, runOk, testUserIds } from '../test/harness/os.js';
import { pgbenchInit } from '../test/harness/load.js';
import { decodeWalFiles } from '../src/wal/decode-files.js';
import { WorkerPool } from '../src/util/worker-pool.js';
import type { ScanSummary } from '../src/scanner/scan-summary.js';

const RANGE_MB = Number(process.env.BENCH_WAL_MB ?? 1024);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const SEG = 16 * 1024 * 1024;

function segs(dir: string): string[] {
  return readdirSync(dir)
    .filter((n) => /^[0-9A-F]{24}$/.test(n))
    .sort();
}

async function archivedCount(dir: string): Promise<number> {
  return segs(dir).length;
}

async function waitArchived(c: TestCluster, dir: string): Promise<void> {
  const last = await c.switchWal();
  for (let i = 0; i < 600 && !existsSync(join(dir, last)); i++) await new Promise((r) => setTimeout(r, 100));
}

/** Generates the two WAL ranges (unless already in `root`). */
async function generate(root: string): Promise<void> {
  const fpiDir = join(root, 'fpi');
  const smallDir = join(root, 'small');
  const want = Math.ceil((RANGE_MB * 1024 * 1024) / SEG);
  const marker = join(root, 'generated');
  if (existsSync(marker)) return;
  const ids = testUserIds();
  // A half-generated directory from an interrupted run is not reused.
  removeTree(fpiDir);
  removeTree(smallDir);
  for (const d of [root, fpiDir, smallDir]) {
    mkdirSync(d, { recursive: true });
    if (ids) chownSync(d, ids.uid, ids.gid);
  }
  const archDir = join(root, 'current');
  mkdirSync(archDir, { recursive: true });
  if (ids) chownSync(archDir, ids.uid, ids.gid);
  await withCluster(
    {
      version: 15,
      conf: {
        archive_mode: 'on',
        archive_command: `'cp %p ${archDir}/.%f.tmp && mv ${archDir}/.%f.tmp ${archDir}/%f'`,
        max_wal_size: '4GB',
        shared_buffers: '128MB',
        synchronous_commit: 'off',
      },
    },
    async (c) => {
      // Range 1: pgbench with a checkpoint every few seconds, so most records carry full-page images.
      await pgbenchInit(c, 20);
      await waitArchived(c, archDir);
      const skip = new Set(segs(archDir));
      console.log(`generating ${RANGE_MB} MB of pgbench WAL ...`);
      while ((await archivedCount(archDir)) - skip.size < want + 1) {
        await runOk(clientTool('pgbench'), [
          '-n',
          '-T',
          '5',
          '-c',
          '4',
          '-h',
          c.host,
          '-p',
          String(c.port),
          '-U',
          'postgres',
          'postgres',
        ]);
        await c.query('CHECKPOINT');
      }
      await waitArchived(c, archDir);
      for (const n of segs(archDir)
        .filter((n) => !skip.has(n))
        .slice(0, want))
        await runOk('mv', [join(archDir, n), join(fpiDir, n)], { asTestUser: false });
      // Range 2: one bulk INSERT of small rows: millions of small heap-insert records.
      for (const n of segs(archDir)) skip.add(n);
      console.log(`generating ${RANGE_MB} MB of small-record WAL ...`);
      await c.query('CREATE TABLE small_rows (a int)');
      await c.query('CHECKPOINT');
      await waitArchived(c, archDir);
      for (const n of segs(archDir)) skip.add(n);
      const rows = Math.ceil((RANGE_MB * 1024 * 1024) / 70) + 1_000_000;
      await c.query(`INSERT INTO small_rows SELECT generate_series(1, ${rows})`);
      await waitArchived(c, archDir);
      for (const n of segs(archDir)
        .filter((n) => !skip.has(n))
        .slice(0, want))
        await runOk('mv', [join(archDir, n), join(smallDir, n)], { asTestUser: false });
    },
  );
  removeTree(archDir);
  writeFileSync(marker, `${RANGE_MB} MB per range\n`);
}

/**
 * Runs commands from a small helper process, so this process does not fork while it measures. Node starts a child
 * with fork(2), which makes every page of the parent copy-on-write; the worker threads' reused buffers and heaps then
 * take a page fault per page on their next write. Measured here: after each pg_waldump run started from this
 * process, a 1-worker scan of the FPI range went 1.9 → 1.5 GB/s and a 2-worker one 3.5 → 2.2 GB/s (a `sleep 0.3`
 * child did the same; 0.3 s of idle or busy main thread did not). bart-scanner starts no process while it scans.
 */
class CommandRunner {
  private readonly child: ChildProcess;
  private nextId = 0;
  private readonly waiting = new Map<number, (r: { code: number; stdout: string; stderr: string }) => void>();

  constructor() {
    const code = `const { execFile } = require('node:child_process');
process.on('message', ({ id, cmd, args }) =>
  execFile(cmd, args, { maxBuffer: 1 << 26 }, (err, stdout, stderr) =>
    process.send({ id, code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr })));`;
    this.child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.child.on('message', (m: { id: number; code: number; stdout: string; stderr: string }) => {
      this.waiting.get(m.id)?.(m);
      this.waiting.delete(m.id);
    });
  }

  run(cmd: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.child.send({ id, cmd, args });
    });
  }

  close(): void {
    this.child.kill();
  }
}

async function timed(fn: () => Promise<void>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** Scans every file on `pool` (the scanner's per-segment work), in order, all queued at once. */
async function scanAll(pool: WorkerPool<ScanSummary>, files: string[]): Promise<void> {
  await Promise.all(files.map((path) => pool.run({ path })));
}

interface Result {
  label: string;
  mb: number;
  records: number;
  waldump: number;
  /** decodeWalFiles on the main thread (decode and CRC only, no MBM). */
  decode: number;
  /** The scanner's work on one worker thread. */
  single: number;
  /** The same on {@link threads} worker threads. */
  parallel: number;
  threads: number;
  /** CPU seconds (user + system) of the best pg_waldump run and of the best 1-worker run. */
  waldumpCpu: number;
  singleCpu: number;
}

async function measure(label: string, dir: string, runner: CommandRunner): Promise<Result> {
  const names = segs(dir);
  const files = names.map((n) => join(dir, n));
  const mb = (names.length * SEG) / (1024 * 1024);
  // Warm the page cache.
  await runner.run('sh', ['-c', `cat ${dir}/* > /dev/null`]);
  // pg_waldump's CPU seconds (user + system) come from /usr/bin/time, pgbart's from the process
  // (all its threads): on a shared machine CPU time says more about the work than wall time.
  let waldumpCpu = Infinity;
  const waldumpOnce = () =>
    timed(async () => {
      const args = ['-f', 'cpu %U %S', clientTool('pg_waldump'), '--stats=record', '-p', dir, names[0]!];
      const r = await runner.run('/usr/bin/time', [...args, names[names.length - 1]!]);
      // pg_waldump ends with an error when the last record continues past the last file.
      if (!/Total/.test(r.stdout)) throw new Error(`pg_waldump failed (${r.code}): ${r.stderr}`);
      const m = /cpu ([0-9.]+) ([0-9.]+)\s*$/.exec(r.stderr);
      if (m) waldumpCpu = Math.min(waldumpCpu, Number(m[1]) + Number(m[2]));
    });
  let records = 0;
  const decodeOnce = () =>
    timed(async () => {
      let blocks = 0;
      const r = await decodeWalFiles(files, (rec) => {
        blocks += rec.blockCount;
      });
      records = r.records;
      if (blocks === 0) throw new Error('no block references decoded');
    });
  const threads = Number(process.env.BENCH_THREADS ?? Math.min(4, availableParallelism()));
  const script = new URL('../src/scanner/scan-bench-worker.js', import.meta.url);
  const pool1 = new WorkerPool<ScanSummary>(script, 1);
  const poolN = new WorkerPool<ScanSummary>(script, threads);
  let waldump = Infinity;
  let decode = Infinity;
  let single = Infinity;
  let parallel = Infinity;
  let singleCpu = Infinity;
  const cpuOf = async (fn: () => Promise<void>): Promise<number> => {
    const c0 = process.cpuUsage();
    await fn();
    const c = process.cpuUsage(c0);
    return (c.user + c.system) / 1e6;
  };
  // The pool's threads do not keep Node alive on their own (they are unref'd).
  const keepAlive = setInterval(() => undefined, 1000);
  try {
    // Untimed rounds over the whole range bring every worker thread to the steady state a running bart-scanner is
    // in (the JIT's optimised code, a grown heap): after 4 files each, a 2-worker scan of the FPI range went
    // 2.4 → 3.1 GB/s over its next five rounds, so a short warm-up measured the warm-up, not the scanner.
    for (let i = 0; i < 2; i++) {
      await scanAll(pool1, files);
      await scanAll(poolN, files);
    }
    for (let i = 0; i < RUNS; i++) {
      waldump = Math.min(waldump, await waldumpOnce());
      let cpu = 0;
      single = Math.min(single, await timed(async () => void (cpu = await cpuOf(() => scanAll(pool1, files)))));
      singleCpu = Math.min(singleCpu, cpu);
      parallel = Math.min(parallel, await timed(() => scanAll(poolN, files)));
      decode = Math.min(decode, await decodeOnce());
    }
  } finally {
    clearInterval(keepAlive);
    await pool1.close();
    await poolN.close();
  }
  return { label, mb, records, waldump, decode, single, parallel, threads, waldumpCpu, singleCpu };
}

async function main(): Promise<void> {
  if (!testUserIds()) throw new Error('run the benchmark as root (clusters run as the postgres user)');
  const keep = process.env.BENCH_WAL_DIR;
  const root = keep ?? makeTempDir('scanner-bench');
  try {
    await generate(root);
    const runner = new CommandRunner();
    let results: Result[];
    try {
      results = [
        await measure('pgbench, frequent checkpoints (mostly full-page images)', join(root, 'fpi'), runner),
        await measure('bulk INSERT of small rows (small records)', join(root, 'small'), runner),
      ];
    } finally {
      runner.close();
    }
    const rate = (mb: number, s: number) => `${(mb / 1024 / s).toFixed(2)} GB/s`;
    const lines = [
      `# Scanner benchmark — ${new Date().toISOString().slice(0, 10)}`,
      '',
      `Machine: ${cpus().length} × ${cpus()[0]?.model ?? '?'}; Node ${process.version}; PostgreSQL 15 WAL; best of ${RUNS} runs after two untimed rounds over each range (steady state, as a running daemon), page cache warm.`,
      `Load average when the measurements ended: ${loadavg()
        .map((l) => l.toFixed(2))
        .join(', ')} (other work on the machine slows both tools alike).`,
      'pgbart verifies every record\'s CRC-32C. "1 worker" / "N workers": the scanner\'s work per segment (decode,',
      'CRC, build the MBM, not written) on 1 and on N worker threads; "decode": decodeWalFiles on the main thread',
      '(all block references in order, no MBM). pg_waldump uses one core. pg_waldump is started from a helper process, so',
      "the scans' process never forks between rounds (a fork makes its memory copy-on-write; bart-scanner does not fork).",
      '',
      '| WAL range | size | records | pg_waldump --stats=record | pgbart decode | pgbart 1 worker | pgbart N workers | N workers / pg_waldump | 1 worker / pg_waldump | N workers / 1 worker |',
      '|---|---|---|---|---|---|---|---|---|---|',
      ...results.map(
        (r) =>
          `| ${r.label} | ${r.mb} MB | ${(r.records / 1e6).toFixed(2)} M | ${rate(r.mb, r.waldump)} | ${rate(r.mb, r.decode)} | ${rate(r.mb, r.single)} | ${rate(r.mb, r.parallel)} (${r.threads}) | ${(r.waldump / r.parallel).toFixed(2)}x | ${(r.waldump / r.single).toFixed(2)}x | ${(r.single / r.parallel).toFixed(2)}x |`,
      ),
      '',
      'CPU seconds (user + system, best run; pgbart: the whole process with its 1 worker thread). A shared machine',
      'stretches wall times, CPU times much less: "CPU ratio" = pg_waldump CPU / pgbart CPU (above 1: pgbart needs less).',
      '',
      '| WAL range | pg_waldump CPU | pgbart 1 worker CPU | CPU ratio |',
      '|---|---|---|---|',
      ...results.map(
        (r) =>
          `| ${r.label} | ${r.waldumpCpu.toFixed(2)} s | ${r.singleCpu.toFixed(2)} s | ${(r.waldumpCpu / r.singleCpu).toFixed(2)}x |`,
      ),
      '',
    ];
    const text = lines.join('\n');
    console.log(text);
    const out = join(REPO_ROOT, 'bench', 'results', `${new Date().toISOString().slice(0, 10)}-scanner.md`);
    mkdirSync(join(REPO_ROOT, 'bench', 'results'), { recursive: true });
    writeFileSync(out, text);
    console.log(`written: ${out}`);
  } finally {
    if (!keep) removeTree(root);
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
