// Concept: WAL archiving into an S3 repository against real radosgw — INIT's archive_command, ARCHIVE-PUSH (file and --stdin), ARCHIVE-GET, MBMs at push time, bart-scanner filling gaps, radosgw killed mid-push, a remote server over ssh.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createBartSetup, serverSection, type BartSetup } from './harness/bart.js';
import { TestCluster } from './harness/cluster.js';
import { testUserIds, type RunResult } from './harness/os.js';
import { REPO_ROOT, versionsUnderTest } from './harness/pg-binaries.js';
import { radosgwInstalled, TestS3 } from './harness/s3.js';
import { BART_TEST_USER, TestSshd } from './harness/sshd.js';
import { waitFor } from './harness/wait.js';
import { loadConfig } from '../src/config/parse-config.js';
import { openWalArchive } from '../src/storage/open-repository.js';
import { encodeMbm } from '../src/scanner/mbm-format.js';
import { scanWalFile } from '../src/scanner/scan-wal-file.js';
import { e2eOnly } from './harness/test-size.js';

const skip = radosgwInstalled()
  ? e2eOnly(
      'npm test runs ARCHIVE-PUSH/GET and INIT end to end on posix, and the S3 driver against the same storage contract in storage-driver',
    )
  : 'radosgw not installed (scripts/install-deps.sh)';
const version = versionsUnderTest()[0]!;
const BUCKET = 'pgbart-archive';
const PREFIX = 'pgbart/wal';
const SEGMENT_RE = /^[0-9A-F]{24}$/;
const MBM_RE = /^([0-9A-F]{8})_([0-9A-F]{16})_([0-9A-F]{16})\.mbm$/;
const SEGMENT_SIZE = 16 * 1024 * 1024;

let s3: TestS3 | undefined;

before(async () => {
  if (skip !== false) return;
  s3 = await TestS3.start();
  await s3.createBucket(BUCKET);
});
after(async () => {
  await s3?.stop();
});

/** The [BART] lines of an S3 repository in the test bucket. */
function s3Globals(): Record<string, string> {
  return {
    repository: 's3',
    s3_endpoint: s3!.httpEndpoint,
    s3_bucket: BUCKET,
    s3_prefix: PREFIX,
    s3_key: s3!.accessKey,
    s3_key_secret: s3!.secretKey,
  };
}

/** Names of the objects in `<prefix>/<server>/archived_wals/`. */
async function archived(server: string): Promise<string[]> {
  const below = `${PREFIX}/${server}/archived_wals/`;
  return (await s3!.bucketEntries(BUCKET))
    .map((e) => e.name)
    .filter((n) => n.startsWith(below))
    .map((n) => n.slice(below.length))
    .sort();
}

/** The segment name whose MBM is `mbm` (16 MB segments). */
function segmentOfMbm(mbm: string): string {
  const m = MBM_RE.exec(mbm)!;
  const segNo = BigInt(`0x${m[3]}`) / BigInt(SEGMENT_SIZE) - 1n;
  return `${m[1]}${(segNo >> 8n).toString(16).toUpperCase().padStart(8, '0')}${(segNo & 0xffn).toString(16).toUpperCase().padStart(8, '0')}`;
}

/** Reads an archived object through the server's WAL archive storage (as bart does). */
async function readArchived(setup: BartSetup, server: string, key: string): Promise<Buffer> {
  const config = loadConfig(setup.configPath);
  const storage = openWalArchive(
    config,
    config.servers.find((s) => s.name === server)!,
  );
  try {
    return await storage.readAll(key, 64 * 1024 * 1024);
  } finally {
    await storage.close();
  }
}

/** Runs bin/bart.js with `stdin` piped from `feed`, which decides when and what to write. */
function bartWithStdin(
  setup: BartSetup,
  args: string[],
  feed: (stdin: NodeJS.WritableStream) => Promise<void>,
): Promise<RunResult> {
  const ids = testUserIds();
  const child = spawn(process.execPath, [join(REPO_ROOT, 'bin', 'bart.js'), '-c', setup.configPath, ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
    ...(ids ? { uid: ids.uid, gid: ids.gid } : {}),
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdin.on('error', () => undefined);
  const done = new Promise<RunResult>((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
  void feed(child.stdin).catch(() => child.stdin.destroy());
  return done;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe(`WAL archive in S3 (radosgw), PostgreSQL ${version}`, { concurrency: false, skip }, () => {
  let cluster: TestCluster;
  let setup: BartSetup;

  before(async () => {
    cluster = await TestCluster.create({ version, conf: { archive_mode: 'on' } });
    setup = createBartSetup(s3Globals());
    setup.writeConfig(
      `${readFileSync(setup.configPath, 'utf8')}\n${serverSection(cluster, 'src', { allow_incremental_backups: 'enabled' })}`,
    );
  });
  after(async () => {
    await cluster?.destroy();
    setup?.cleanup();
  });

  test('INIT writes an ARCHIVE-PUSH archive_command; the cluster archives into the bucket; MBMs are made at push time; ARCHIVE-GET returns the bytes', async () => {
    const init = await setup.bart(['INIT', '-s', 'src']);
    assert.equal(init.code, 0, init.stderr);
    const command = String(await cluster.scalar('SHOW archive_command'));
    assert.match(command, /ARCHIVE-PUSH -s src %p$/);
    assert.ok(!command.includes('archived_wals'), `no archive_path in '${command}'`);

    await cluster.query('CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g');
    let last = '';
    for (let i = 0; i < 3; i++) {
      await cluster.query(`UPDATE t SET v = v || '${i}' WHERE id % 7 = ${i}`);
      last = await cluster.switchWal();
    }
    await waitFor(`${last} in the bucket`, async () => (await archived('src')).includes(last), {
      timeoutMs: 60_000,
      intervalMs: 250,
    });
    const names = await archived('src');
    const segments = names.filter((n) => SEGMENT_RE.test(n));
    const mapped = new Set(names.filter((n) => MBM_RE.test(n)).map(segmentOfMbm));
    assert.ok(segments.length >= 3, names.join(' '));
    // Every segment but the newest has its MBM (the newest may end inside a record that continues).
    for (const s of segments.slice(0, -1))
      assert.ok(mapped.has(s), `MBM of ${s} made at push time: ${names.join(' ')}`);
    // Only the segments waiting for their next one stay in the local spool.
    const spool = join(setup.backupPath, 'src', 'mbm-spool');
    assert.ok(readdirSync(spool).filter((n) => SEGMENT_RE.test(n)).length <= 1, readdirSync(spool).join(' '));

    // ARCHIVE-GET fetches from the bucket; the bytes are the archived object's, and the MBM made at
    // push time equals what the scanner makes from them.
    const seg = segments.at(-2)!;
    const dest = join(setup.dir, 'RECOVERYXLOG');
    const got = await setup.bart(['ARCHIVE-GET', '-s', 'src', seg, dest]);
    assert.equal(got.code, 0, got.stderr);
    const bytes = readFileSync(dest);
    assert.equal(sha(bytes), sha(await readArchived(setup, 'src', seg)));
    const local = join(setup.dir, 'scan');
    mkdirSync(local);
    writeFileSync(join(local, seg), bytes);
    writeFileSync(join(local, segments.at(-1)!), await readArchived(setup, 'src', segments.at(-1)!));
    const r = await scanWalFile(join(local, seg), { dryRun: true });
    assert.equal(r.status, 'written');
    if (r.status === 'written') {
      const mbm = names.find((n) => MBM_RE.test(n) && segmentOfMbm(n) === seg)!;
      assert.ok(encodeMbm(r.map).equals(await readArchived(setup, 'src', mbm)), `${mbm} equals the scanner's`);
    }
    const absent = await setup.bart(['ARCHIVE-GET', '-s', 'src', '0000000A.history', join(setup.dir, 'H')]);
    assert.equal(absent.code, 1);
    assert.match(absent.stdout, /is not in the archive of server "src" \(s3:\/\//);
    // To stdout (restore_command over ssh).
    const toStdout = await new Promise<Buffer>((resolve, reject) => {
      const ids = testUserIds();
      const child = spawn(
        process.execPath,
        [join(REPO_ROOT, 'bin', 'bart.js'), '-c', setup.configPath, 'ARCHIVE-GET', '-s', 'src', seg, '-'],
        { stdio: ['ignore', 'pipe', 'inherit'], ...(ids ? { uid: ids.uid, gid: ids.gid } : {}) },
      );
      const chunks: Buffer[] = [];
      child.stdout.on('data', (d: Buffer) => chunks.push(d));
      child.on('error', reject);
      child.on('close', (code) => (code === 0 ? resolve(Buffer.concat(chunks)) : reject(new Error(`exit ${code}`))));
    });
    assert.equal(sha(toStdout), sha(bytes), 'ARCHIVE-GET - writes exactly the segment to stdout');

    // bart-scanner fills a gap from the bucket: an MBM removed is made again by the daemon.
    const mbm = names.find((n) => MBM_RE.test(n) && segmentOfMbm(n) === seg)!;
    const config = loadConfig(setup.configPath);
    const storage = openWalArchive(config, config.servers[0]!);
    try {
      await storage.remove(mbm);
      const daemon = await new Promise<RunResult>((resolve) => {
        const ids = testUserIds();
        const child = spawn(
          process.execPath,
          [join(REPO_ROOT, 'bin', 'bart-scanner.js'), '-c', setup.configPath, '--daemon'],
          { stdio: ['ignore', 'pipe', 'pipe'], ...(ids ? { uid: ids.uid, gid: ids.gid } : {}) },
        );
        let out = '';
        child.stdout.on('data', (x: Buffer) => (out += x.toString()));
        child.stderr.on('data', (x: Buffer) => (out += x.toString()));
        child.on('close', (code) => resolve({ code, stdout: out, stderr: '' }));
      });
      assert.equal(daemon.code, 0, daemon.stdout);
      try {
        await waitFor(`${mbm} made again by bart-scanner`, async () => (await archived('src')).includes(mbm), {
          timeoutMs: 60_000,
          intervalMs: 500,
        });
      } finally {
        const stop = await new Promise<number | null>((resolve) => {
          const ids = testUserIds();
          const child = spawn(
            process.execPath,
            [join(REPO_ROOT, 'bin', 'bart-scanner.js'), '-c', setup.configPath, 'STOP'],
            { stdio: 'ignore', ...(ids ? { uid: ids.uid, gid: ids.gid } : {}) },
          );
          child.on('close', resolve);
        });
        assert.equal(stop, 0);
      }
    } finally {
      await storage.close();
    }
  });

  test('ARCHIVE-PUSH --stdin: a whole segment is stored, the same again succeeds, a short or different one or a bad name is refused and nothing is stored', async () => {
    const segment = Buffer.from(readFileSync(join(setup.dir, 'RECOVERYXLOG')));
    // A segment of a timeline of its own, so that the cluster's archiving never meets it.
    const name = '0000000900000000000000A1';
    const push = (data: Buffer, walName = name) =>
      bartWithStdin(setup, ['ARCHIVE-PUSH', '-s', 'src', '--stdin', walName], async (stdin) => {
        stdin.end(data);
      });

    // The good segment first: MANAGE below compresses only segments older than 10 s, and the
    // refusals in between use part of that wait.
    let r = await push(segment);
    assert.equal(r.code, 0, r.stderr);
    const storedAt = Date.now();
    assert.equal(sha(await readArchived(setup, 'src', name)), sha(segment));

    // Cut half way (the ssh connection dropped): refused, nothing stored (under a name not yet archived).
    const cutName = '0000000900000000000000A2';
    r = await push(segment.subarray(0, SEGMENT_SIZE / 2), cutName);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /^ERROR: .*is 8388608 bytes, not the complete WAL segment of 16777216 bytes/);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.ok(!(await archived('src')).includes(cutName));
    // Not WAL at all.
    r = await push(randomBytes(SEGMENT_SIZE), cutName);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /does not start with a WAL long page header/);
    assert.ok(!(await archived('src')).includes(cutName));
    // A name that is not a WAL file name never reaches the bucket.
    r = await push(segment, '../../etc/passwd');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /WAL file name "\.\.\/\.\.\/etc\/passwd" is not a WAL archive file name/);

    r = await push(segment);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /is already archived for server "src" with identical content/);
    const other = Buffer.from(segment);
    other[SEGMENT_SIZE - 1] ^= 0xff;
    r = await push(other);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /already exists in the archive with different content .*the archived file was kept/);
    assert.equal(sha(await readArchived(setup, 'src', name)), sha(segment), 'the archived object is untouched');

    // MANAGE's wal_compression gzips archived segments in the bucket; ARCHIVE-GET still returns the bytes.
    setup.writeConfig(readFileSync(setup.configPath, 'utf8').replace(/^\[src\]$/m, '[src]\nwal_compression = enabled'));
    // Compression takes segments older than 10 s (by the bucket's clock: a margin).
    await new Promise((res) => setTimeout(res, Math.max(0, storedAt + 11_000 - Date.now())));
    r = await setup.bart(['MANAGE', '-s', 'src']);
    assert.equal(r.code, 0, r.stderr);
    const after = await archived('src');
    assert.ok(after.includes(`${name}.gz`) && !after.includes(name), after.join(' '));
    const dest = join(setup.dir, 'FROMGZ');
    r = await setup.bart(['ARCHIVE-GET', '-s', 'src', name, dest]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(sha(readFileSync(dest)), sha(segment), 'ARCHIVE-GET decompresses the .gz from the bucket');
  });

  test('radosgw killed in the middle of an ARCHIVE-PUSH: one ERROR line, non-zero exit, nothing visible; the next push after a restart succeeds', async () => {
    const segment = Buffer.from(readFileSync(join(setup.dir, 'RECOVERYXLOG')));
    const name = '0000000900000000000000B1';
    const r = await bartWithStdin(setup, ['ARCHIVE-PUSH', '-s', 'src', '--stdin', name], async (stdin) => {
      // Half the segment, then radosgw dies, then the rest.
      await new Promise<void>((res) => stdin.write(segment.subarray(0, SEGMENT_SIZE / 2), () => res()));
      await s3!.kill();
      stdin.end(segment.subarray(SEGMENT_SIZE / 2));
    });
    try {
      assert.notEqual(r.code, 0, r.stdout);
      const errors = r.stderr.split('\n').filter((l) => l !== '');
      assert.equal(errors.length, 1, r.stderr);
      assert.match(errors[0]!, /^ERROR: /);
      assert.ok(!/^\s+at /m.test(r.stderr), r.stderr);
    } finally {
      await s3!.restart();
    }
    assert.ok(!(await archived('src')).includes(name), 'nothing under the name after the failed push');
    const again = await bartWithStdin(setup, ['ARCHIVE-PUSH', '-s', 'src', '--stdin', name], async (stdin) => {
      stdin.end(segment);
    });
    assert.equal(again.code, 0, again.stderr);
    assert.equal(sha(await readArchived(setup, 'src', name)), sha(segment));
  });
});

test(
  `a remote server (PostgreSQL ${version}, loopback sshd) archives into S3 through ssh and ARCHIVE-PUSH --stdin`,
  { skip },
  async () => {
    const cleanups: (() => Promise<void> | void)[] = [];
    try {
      const sshd = await TestSshd.start(['postgres', BART_TEST_USER]);
      cleanups.push(() => sshd.stop());
      sshd.authorize(BART_TEST_USER, 'postgres');
      sshd.authorize('postgres', BART_TEST_USER); // archive_command runs ssh to the BART host
      const cluster = await TestCluster.create({ version, conf: { archive_mode: 'on' } });
      cleanups.push(() => cluster.destroy());
      const setup = createBartSetup({
        ...s3Globals(),
        s3_prefix: `${PREFIX}-remote`,
        bart_host: `${BART_TEST_USER}@${sshd.alias}`,
      });
      cleanups.push(() => setup.cleanup());
      setup.writeConfig(
        `${readFileSync(setup.configPath, 'utf8')}\n${serverSection(cluster, 'rem', { remote_host: `postgres@${sshd.alias}`, allow_incremental_backups: 'enabled' })}`,
      );
      execFileSync('chown', ['-R', `${BART_TEST_USER}:`, setup.dir]);

      const init = await setup.bart(['INIT', '-s', 'rem']);
      assert.equal(init.code, 0, init.stderr);
      const command = String(await cluster.scalar('SHOW archive_command'));
      assert.match(
        command,
        new RegExp(`^ssh -o BatchMode=yes ${BART_TEST_USER}@${sshd.alias} '.*ARCHIVE-PUSH -s rem --stdin' %f < %p$`),
      );
      assert.ok(!command.includes('scp'), command);

      await cluster.query('CREATE TABLE r AS SELECT g AS id FROM generate_series(1, 20000) g');
      const first = await cluster.switchWal();
      await cluster.query('UPDATE r SET id = id + 1');
      const last = await cluster.switchWal();
      const below = `${PREFIX}-remote/rem/archived_wals/`;
      const inBucket = async () =>
        (await s3!.bucketEntries(BUCKET))
          .map((e) => e.name)
          .filter((n) => n.startsWith(below))
          .map((n) => n.slice(below.length));
      await waitFor(`${last} archived into the bucket over ssh`, async () => (await inBucket()).includes(last), {
        timeoutMs: 60_000,
        intervalMs: 250,
      });
      const names = await inBucket();
      assert.ok(names.includes(first), names.join(' '));
      assert.ok(
        names.some((n) => MBM_RE.test(n) && segmentOfMbm(n) === first),
        `MBM of ${first} made at push time on the BART host: ${names.join(' ')}`,
      );
      assert.equal(existsSync(join(setup.backupPath, 'rem', 'archived_wals', first)), false, 'nothing in archive_path');
      const check = await setup.bart(['CHECK-CONFIG', '-s', 'rem']);
      assert.match(check.stdout + check.stderr, /archive_command is set: success/);
    } finally {
      for (const c of cleanups.reverse()) await c();
    }
  },
);
