/**
 * Crash safety of the two commands that write into the WAL archive: ARCHIVE-PUSH (run by
 * archive_command) and bart-scanner (MBMs). Each is killed with SIGKILL at its injection points
 * (PGBART_CRASH_AT, util/crash-point.ts): nothing partial ever appears under a final name, the next
 * run completes the work, MANAGE -l lists the temp files the dead process left and MANAGE -d removes
 * them, a damaged MBM is rebuilt from its WAL, and an incremental backup afterwards restores right.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import {
  chownSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { REPO_ROOT, versionsUnderTest } from './harness/pg-binaries.js';
import { testUserIds, type RunResult } from './harness/os.js';
import type { TestCluster } from './harness/cluster.js';
import { contentSnapshot, createIncrementalSource, restoreAndCheck, takeBackup } from './harness/incremental.js';
import { freshPath, type RestoreSource } from './harness/restore.js';
import { scannerPid } from './harness/scanner.js';
import { waitFor } from './harness/wait.js';

const version = versionsUnderTest()[0]!;
const SEGMENT_RE = /^[0-9A-F]{24}$/;
const MBM_RE = /^([0-9A-F]{8})_([0-9A-F]{16})_([0-9A-F]{16})\.mbm$/;

type Exit = RunResult & { signal: NodeJS.Signals | null };

/** Runs bin/<tool>.js with the test config and extra environment; resolves with exit code and signal. */
function runTool(
  src: RestoreSource,
  tool: 'bart' | 'bart-scanner',
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<Exit> {
  const child = spawn(process.execPath, [join(REPO_ROOT, 'bin', `${tool}.js`), '-c', src.setup.configPath, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
}

/** Archived segments, oldest first. */
function segments(src: RestoreSource): string[] {
  return readdirSync(src.archivePath)
    .filter((n) => SEGMENT_RE.test(n))
    .sort();
}

/** Segment names (same timeline) that have an MBM: an MBM is named after the end LSN of its segment. */
function segmentsWithMbm(src: RestoreSource): Set<string> {
  const out = new Set<string>();
  for (const n of readdirSync(src.archivePath)) {
    const m = MBM_RE.exec(n);
    if (!m) continue;
    const segNo = BigInt(`0x${m[3]}`) / BigInt(16 * 1024 * 1024) - 1n;
    out.add(
      `${m[1]}${(segNo >> 8n).toString(16).toUpperCase().padStart(8, '0')}${(segNo & 0xffn).toString(16).toUpperCase().padStart(8, '0')}`,
    );
  }
  return out;
}

/** File name of the MBM of a segment. */
function mbmOf(src: RestoreSource, segment: string): string {
  for (const n of readdirSync(src.archivePath)) {
    const m = MBM_RE.exec(n);
    if (!m || m[1] !== segment.slice(0, 8)) continue;
    const segNo = BigInt(`0x${m[3]}`) / BigInt(16 * 1024 * 1024) - 1n;
    if (segNo === (BigInt(`0x${segment.slice(8, 16)}`) << 8n) + BigInt(`0x${segment.slice(16)}`)) return n;
  }
  throw new Error(`no MBM for ${segment}`);
}

function tempFiles(src: RestoreSource): string[] {
  return readdirSync(src.archivePath).filter((n) => /^\..+\.tmp-\d+-[0-9a-z]+$/.test(n));
}

function giveToTestUser(path: string): void {
  const ids = testUserIds();
  if (ids) chownSync(path, ids.uid, ids.gid);
}

describe(`crash safety of ARCHIVE-PUSH and bart-scanner, PostgreSQL ${version}`, { concurrency: false }, () => {
  let src: RestoreSource;
  let c: TestCluster;
  let full = '';

  before(async () => {
    src = await createIncrementalSource(version);
    c = src.cluster;
    await c.query('CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g');
    await c.query('VACUUM t');
    await src.archiveCurrentWal();
    full = await takeBackup(src);
  });
  after(async () => {
    if (src) await runTool(src, 'bart-scanner', ['STOP']);
    await src?.destroy();
  });

  test('ARCHIVE-PUSH killed before and after linking: never a partial file under the WAL name; re-push, ARCHIVE-GET and MANAGE -d clean up', async () => {
    // The newest segment: retained (PITR from the full backup), so MANAGE -d must keep it below.
    const name = segments(src).at(-1)!;
    const archived = join(src.archivePath, name);
    const original = readFileSync(archived);
    const stagedDir = freshPath(src, 'push');
    mkdirSync(stagedDir);
    giveToTestUser(stagedDir);
    const staged = join(stagedDir, name);
    writeFileSync(staged, original);
    giveToTestUser(staged);
    const push = (env: NodeJS.ProcessEnv = {}, path = staged) =>
      runTool(src, 'bart', ['ARCHIVE-PUSH', '-s', src.server, path], env);

    // Killed once the copy is complete but before it is linked in: the WAL name stays absent.
    rmSync(archived);
    let r = await push({ PGBART_CRASH_AT: 'push:copied' });
    assert.equal(r.signal, 'SIGKILL', `ARCHIVE-PUSH reached push:copied\n${r.stdout}\n${r.stderr}`);
    assert.equal(existsSync(archived), false, 'nothing under the WAL file name');
    assert.equal(tempFiles(src).length, 1, 'the dead process left its temp file');
    const get = await runTool(src, 'bart', ['ARCHIVE-GET', '-s', src.server, name, join(freshPath(src, 'get'))]);
    assert.equal(get.code, 1, 'ARCHIVE-GET: the segment is not archived');
    r = await runTool(src, 'bart', ['MANAGE', '-s', src.server, '-l']);
    assert.match(r.stderr + r.stdout, /unused files \(leftovers of interrupted commands\): 1/);
    assert.match(r.stderr + r.stdout, /temp file of dead process/);

    // The archiver retries: archived, whole.
    r = await push();
    assert.equal(r.code, 0, `re-push after the crash\n${r.stderr}`);
    assert.ok(readFileSync(archived).equals(original), 'the archived segment holds the original bytes');

    // Killed right after the segment became visible (the storage writer linked it in and removed
    // its temp file), before the command reported success: the WAL file is complete.
    rmSync(archived);
    r = await push({ PGBART_CRASH_AT: 'push:linked' });
    assert.equal(r.signal, 'SIGKILL', 'ARCHIVE-PUSH reached push:linked');
    assert.ok(readFileSync(archived).equals(original), 'linked in whole before the kill');
    assert.equal(tempFiles(src).length, 1, 'only the first dead process left a temp file');
    r = await push();
    assert.equal(r.code, 0, 'the same content again is accepted (idempotent)');

    // Different content under the same name is refused; the archived file is kept.
    const otherDir = freshPath(src, 'other');
    mkdirSync(otherDir);
    giveToTestUser(otherDir);
    const other = Buffer.from(original);
    other[4096 + 100] = other[4096 + 100]! ^ 0xff;
    writeFileSync(join(otherDir, name), other);
    giveToTestUser(join(otherDir, name));
    r = await push({}, join(otherDir, name));
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /already exists in the archive with different content/);
    assert.ok(readFileSync(archived).equals(original), 'the archived file is untouched');

    const dest = join(freshPath(src, 'get'));
    r = await runTool(src, 'bart', ['ARCHIVE-GET', '-s', src.server, name, dest]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(readFileSync(dest).equals(original), 'ARCHIVE-GET returns the original bytes');

    r = await runTool(src, 'bart', ['MANAGE', '-s', src.server, '-d']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(tempFiles(src), [], 'MANAGE -d removed the temp files of the dead processes');
    assert.ok(existsSync(archived), 'and kept the segment (needed for recovery from the full backup)');
  });

  test('bart-scanner killed before and after writing an MBM: restarted it completes every MBM; a damaged MBM is rebuilt; the incremental restores right', async () => {
    for (let i = 0; i < 3; i++) {
      await c.query(`UPDATE t SET v = v || '${i}' WHERE id BETWEEN ${i * 3000 + 1} AND ${i * 3000 + 500}`);
      await src.archiveCurrentWal();
    }
    const before = segmentsWithMbm(src);
    const todo = segments(src).filter((s) => !before.has(s));
    assert.ok(todo.length >= 3, `segments without MBM: ${todo.join(', ')}`);

    // One segment by hand, killed before its MBM is written: no MBM, nothing half-written.
    let r = await runTool(src, 'bart-scanner', [join(src.archivePath, todo[0]!)], { PGBART_CRASH_AT: 'scan:decoded' });
    assert.equal(r.signal, 'SIGKILL', `bart-scanner reached scan:decoded\n${r.stderr}`);
    assert.equal(segmentsWithMbm(src).has(todo[0]!), false);
    assert.deepEqual(tempFiles(src), []);

    // Killed right after renaming the MBM into place: it is complete and readable.
    r = await runTool(src, 'bart-scanner', [join(src.archivePath, todo[1]!)], { PGBART_CRASH_AT: 'scan:mbm-written' });
    assert.equal(r.signal, 'SIGKILL', 'bart-scanner reached scan:mbm-written');
    assert.ok(segmentsWithMbm(src).has(todo[1]!), 'the MBM of the second segment exists');
    r = await runTool(src, 'bart-scanner', ['-p', join(src.archivePath, mbmOf(src, todo[1]!))]);
    assert.equal(r.code, 0, `bart-scanner -p reads the MBM\n${r.stderr}`);

    // The daemon dies at its first scan (kill -9), and is started again: every segment gets its MBM.
    await runTool(src, 'bart-scanner', ['--daemon'], { PGBART_CRASH_AT: 'scan:decoded' });
    await waitFor('the crashed daemon to be gone', () => scannerPid(src.setup.dir) === undefined);
    assert.equal(segmentsWithMbm(src).has(todo[0]!), false, 'the killed daemon wrote no MBM');
    r = await runTool(src, 'bart-scanner', ['--daemon']);
    assert.equal(r.code, 0, `restarted daemon\n${r.stderr}`);
    const last = segments(src).at(-1)!;
    // Every archived segment but the newest (its last record may continue into the next) gets its MBM.
    await waitFor('MBMs for every archived segment', () => {
      const have = segmentsWithMbm(src);
      return segments(src).every((s) => s === last || have.has(s));
    });
    r = await runTool(src, 'bart-scanner', ['STOP']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(tempFiles(src), [], 'no temp files left by the restarted daemon');

    // A damaged MBM (as a disk error would leave it) is detected and rebuilt from its WAL.
    const damaged = mbmOf(src, todo[2]!);
    const damagedPath = join(src.archivePath, damaged);
    const intact = readFileSync(damagedPath);
    truncateSync(damagedPath, Math.floor(intact.length / 2));
    const snap = await contentSnapshot(c);
    const r2 = await src.setup.bart(['BACKUP', '-s', src.server, '--parent', full]);
    assert.equal(r2.code, 0, `incremental over a damaged MBM\n${r2.stdout}\n${r2.stderr}`);
    assert.match(
      r2.stderr + r2.stdout,
      new RegExp(`invalid MBM file .*${damaged}.*scanning WAL segment .* again to rebuild it`),
    );
    assert.ok(readFileSync(damagedPath).equals(intact), 'the rebuilt MBM equals the original');
    const id = /backup identifier: '(\d+)'/.exec(r2.stdout)![1]!;
    await restoreAndCheck(src, id, snap, 'incremental taken after scanner crashes and a damaged MBM');
  });
});
