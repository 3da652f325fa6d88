// Benchmark: what encryption at rest costs — tar+lz4 BACKUP and RESTORE with and without repository_cipher.

/**
 * Encryption benchmark: part of `npm run bench` (BENCH_PARTS=cipher; bench.ts calls {@link cipherBench} on its
 * loaded cluster). Two server sections for the same cluster, one plain and one with `repository_cipher =
 * aes-256-gcm`, each with its own (POSIX) repository; a tar + lz4 BACKUP with 2 threads and its RESTORE with 2
 * workers of each, in turns, best of BENCH_CIPHER_RUNS (default 3), page cache warm. Results in
 * bench/results/<date>-cipher.md. The target (issue 16): encryption adds at most 10% to either.
 */
import { spawnSync } from 'node:child_process';
import { chownSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { backupIdFrom, type BackupFixture } from '../test/harness/backup-fixture.js';
import { serverSection } from '../test/harness/bart.js';
import { REPO_ROOT } from '../test/harness/pg-binaries.js';
import { removeTree, testUserIds } from '../test/harness/os.js';
import { BENCH, machineDescription, settleDisk, timed, type BenchData } from './bench-data.js';
import { inPlaceGcm } from '../src/storage/encryption/native-gcm.js';

const RUNS = Number(process.env.BENCH_CIPHER_RUNS ?? 3);

/**
 * Runs bart under /usr/bin/time: its CPU seconds (user + system, worker threads and waited-for children included)
 * next to the wall time. On a machine shared with other engineers' builds the wall time says mostly how busy the
 * machine was; the CPU time says what the work cost.
 */
function bartTimed(fx: BackupFixture, args: string[]): { code: number; stdout: string; stderr: string; cpu: number } {
  const out = join(fx.setup.dir, 'time.out');
  const r = spawnSync(
    '/usr/bin/time',
    ['-f', '%U %S', '-o', out, join(REPO_ROOT, 'bin', 'bart.js'), '-c', fx.setup.configPath, ...args],
    { cwd: fx.setup.dir, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 },
  );
  const [user, system] = readFileSync(out, 'utf8').trim().split('\n').pop()!.split(' ').map(Number);
  return { code: r.status ?? 1, stdout: r.stdout, stderr: r.stderr, cpu: user! + system! };
}

/** Times tar+lz4 BACKUP and RESTORE with and without encryption on the loaded cluster of `fx`; writes <date>-cipher.md. */
export async function cipherBench(fx: BackupFixture, work: string, data: BenchData): Promise<void> {
  const ids = testUserIds();
  if (!ids) throw new Error('run the benchmark as root (clusters run as the postgres user)');
  const passFile = join(fx.setup.dir, 'cipher-pass');
  writeFileSync(passFile, 'benchmark passphrase, not a secret\n', { mode: 0o600 });
  chownSync(passFile, ids.uid, ids.gid);
  const base = readFileSync(fx.setup.configPath, 'utf8');
  const common = { xlog_method: 'stream' };
  fx.setup.writeConfig(
    base +
      serverSection(fx.cluster, 'pgplain', common) +
      serverSection(fx.cluster, 'pgcipher', {
        ...common,
        repository_cipher: 'aes-256-gcm',
        repository_cipher_pass_file: passFile,
      }),
  );
  // POSIX servers need their archive directory (the WAL these backups need is streamed, not archived).
  for (const server of ['pgplain', 'pgcipher']) {
    const dir = join(fx.setup.backupPath, server, 'archived_wals');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    for (const d of [join(fx.setup.backupPath, server), dir]) chownSync(d, ids.uid, ids.gid);
  }
  const target = join(work, 'cipher-restored');
  const loadAtStart = loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');
  const best = { backup: new Map<string, number>(), restore: new Map<string, number>() };
  const cpu = { backup: new Map<string, number>(), restore: new Map<string, number>() };
  const record = (m: Map<string, number>, k: string, v: number) => m.set(k, Math.min(m.get(k) ?? Infinity, v));
  for (let run = 0; run < RUNS; run++) {
    for (const server of ['pgplain', 'pgcipher']) {
      let id = '';
      await settleDisk();
      record(
        best.backup,
        server,
        await timed(async () => {
          const r = bartTimed(fx, ['BACKUP', '-s', server, '-F', 't', '--compress', 'lz4', '--thread-count', '2']);
          if (r.code !== 0) throw new Error(`bart BACKUP -s ${server} failed: ${r.stderr}`);
          record(cpu.backup, server, r.cpu);
          id = backupIdFrom(r.stdout);
        }),
      );
      removeTree(target);
      await settleDisk();
      record(
        best.restore,
        server,
        await timed(async () => {
          const r = bartTimed(fx, ['RESTORE', '-s', server, '-i', id, '-p', target, '-w', '2', '--target-immediate']);
          if (r.code !== 0) throw new Error(`bart RESTORE -s ${server} failed: ${r.stderr}`);
          record(cpu.restore, server, r.cpu);
        }),
      );
      removeTree(target);
      const del = await fx.setup.bart(['DELETE', '-s', server, '-i', id]);
      if (del.code !== 0) throw new Error(`bart DELETE -s ${server} failed: ${del.stderr}`);
    }
  }
  const date = new Date().toISOString().slice(0, 10);
  const row = (label: string, m: Map<string, number>, c: Map<string, number>) => {
    const [plain, cipher] = [m.get('pgplain')!, m.get('pgcipher')!];
    const [plainCpu, cipherCpu] = [c.get('pgplain')!, c.get('pgcipher')!];
    return (
      `| ${label} | ${plain.toFixed(2)} | ${cipher.toFixed(2)} | ${(cipher / plain).toFixed(2)} | ` +
      `${plainCpu.toFixed(2)} | ${cipherCpu.toFixed(2)} | ${(cipherCpu / plainCpu).toFixed(2)} |`
    );
  };
  const lines = [
    `# Encryption at rest benchmark, ${date}`,
    '',
    `PostgreSQL ${BENCH.version}; cluster ${(data.dbBytes / 2 ** 30).toFixed(2)} GB = pgbench -i -s ${BENCH.scale} + ${data.randomMb} MB of random bytea; ` +
      `POSIX repositories on the same disk; ${machineDescription()}. Best of ${RUNS}, taken in turns; page cache warm. ` +
      'bart BACKUP -F t --compress lz4 --thread-count 2 and RESTORE -w 2, without and with repository_cipher = aes-256-gcm. ' +
      `AES-GCM: ${inPlaceGcm() ? 'in place, native/aes-gcm.c' : 'node:crypto (the in-place addon was not built, or PGBART_NATIVE_GCM=off)'}.`,
    '',
    `Load average when the timings began: ${loadAtStart}. Wall: best elapsed seconds; CPU: best user + system seconds ` +
      'of the bart process (its worker threads and children included), the cost of the work whatever else runs.',
    '',
    '| operation | plain (s) | aes-256-gcm (s) | encrypted / plain | plain CPU (s) | aes-256-gcm CPU (s) | CPU ratio |',
    '|---|---:|---:|---:|---:|---:|---:|',
    row('full backup, tar + lz4, 2 threads', best.backup, cpu.backup),
    row('restore of it, 2 workers', best.restore, cpu.restore),
    '',
  ];
  const file = join(REPO_ROOT, 'bench', 'results', `${date}-cipher.md`);
  writeFileSync(file, lines.join('\n'));
  console.log(lines.join('\n'));
  console.log(`written ${file}`);
}
