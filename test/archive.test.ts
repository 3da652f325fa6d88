import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { appendFileSync, chownSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { createBartSetup, serverSection, type BartSetup } from './harness/bart.js';
import { TestCluster } from './harness/cluster.js';
import { makeTempDir, removeTree, run, runOk, testUserIds } from './harness/os.js';
import { REPO_ROOT, versionsUnderTest } from './harness/pg-binaries.js';
import { waitFor } from './harness/wait.js';

const SEGMENT_SIZE = 16 * 1024 * 1024;

/** Writes a file owned by the test user (bart runs as that user and must read it). */
function writeOwned(path: string, data: Buffer | string): void {
  writeFileSync(path, data);
  const ids = testUserIds();
  if (ids) chownSync(path, ids.uid, ids.gid);
}

/** Runs a shell command line as the test user (bart's stdin redirected from a file). */
function runShell(line: string) {
  return run('sh', ['-c', line]);
}

/** A bart.cfg with one server "arch" whose catalog exists (INIT --no-configure needs no server). */
async function archiveSetup(): Promise<{ setup: BartSetup; archiveDir: string; work: string }> {
  const setup = createBartSetup({}, '[ARCH]\nhost = 127.0.0.1\nport = 1\nuser = postgres\ncluster_owner = postgres\n');
  const init = await setup.bart(['INIT', '-s', 'arch', '--no-configure']);
  assert.equal(init.code, 0, init.stderr);
  const work = join(setup.dir, 'work');
  mkdirSync(work);
  const ids = testUserIds();
  if (ids) chownSync(work, ids.uid, ids.gid);
  return { setup, archiveDir: join(setup.backupPath, 'arch', 'archived_wals'), work };
}

test('ARCHIVE-PUSH: stores atomically, the same file twice succeeds, a different file under an existing name fails and keeps the original', async () => {
  const { setup, archiveDir, work } = await archiveSetup();
  try {
    const name = '000000010000000000000007';
    const original = randomBytes(SEGMENT_SIZE);
    const src = join(work, name);
    writeOwned(src, original);

    const first = await setup.bart(['ARCHIVE-PUSH', '-s', 'arch', src]);
    assert.equal(first.code, 0, first.stderr);
    const stored = join(archiveDir, name);
    assert.ok(readFileSync(stored).equals(original));
    const st = statSync(stored);
    assert.equal(st.mode & 0o777, 0o600);
    const ids = testUserIds();
    if (ids) assert.equal(st.uid, ids.uid, 'archived file owned by the BART user');

    const again = await setup.bart(['ARCHIVE-PUSH', '-s', 'arch', src]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(
      again.stdout,
      /INFO:\s+WAL file ".*000000010000000000000007" is already archived for server "arch" with identical content/,
    );

    // Same size, one byte different at the very end: the whole file is compared.
    const other = Buffer.from(original);
    other[other.length - 1] ^= 0xff;
    const otherDir = join(work, 'other');
    mkdirSync(otherDir);
    if (ids) chownSync(otherDir, ids.uid, ids.gid);
    writeOwned(join(otherDir, name), other);
    const clash = await setup.bart(['ARCHIVE-PUSH', '-s', 'arch', join(otherDir, name)]);
    assert.notEqual(clash.code, 0);
    assert.match(
      clash.stderr,
      /^ERROR:\s+".*000000010000000000000007" already exists in the archive with different content .*the archived file was kept/,
    );
    assert.ok(readFileSync(stored).equals(original), 'the archived file is untouched');

    // .history, .backup and .partial are archive files too.
    for (const [file, data] of [
      ['00000002.history', '1\t0/3000000\tno recovery target specified\n'],
      ['000000010000000000000007.00000028.backup', 'START WAL LOCATION: 0/7000028 (file 000000010000000000000007)\n'],
      ['000000010000000000000008.partial', randomBytes(SEGMENT_SIZE)],
    ] as const) {
      writeOwned(join(work, file), data);
      const r = await setup.bart(['ARCHIVE-PUSH', '-s', 'arch', join(work, file)]);
      assert.equal(r.code, 0, `${file}: ${r.stderr}`);
      assert.ok(readFileSync(join(archiveDir, file)).equals(Buffer.from(data)), file);
    }

    // Nothing that is not a WAL archive name, and no truncated segment.
    for (const bad of [
      'foo.txt',
      '00000001000000000000000G',
      '000000010000000000000009.gz',
      '0000000100000000000000090',
    ]) {
      writeOwned(join(work, bad), 'x');
      const r = await setup.bart(['ARCHIVE-PUSH', '-s', 'arch', join(work, bad)]);
      assert.notEqual(r.code, 0, bad);
      assert.match(
        r.stderr,
        new RegExp(
          `^ERROR:\\s+file "${bad.replace('.', '\\.')}" is not a WAL archive file name: expected a WAL segment`,
        ),
        bad,
      );
    }
    writeOwned(join(work, '00000001000000000000000A'), randomBytes(1000));
    const short = await setup.bart(['ARCHIVE-PUSH', '-s', 'arch', join(work, '00000001000000000000000A')]);
    assert.notEqual(short.code, 0);
    assert.match(short.stderr, /is 1000 bytes, not a complete WAL segment/);
    const missing = await setup.bart(['ARCHIVE-PUSH', '-s', 'arch', join(work, '00000001000000000000000B')]);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /cannot read WAL file ".*00000001000000000000000B"/);

    // No temp files are left behind, and only the accepted files are there.
    assert.deepEqual(readdirSync(archiveDir).sort(), [
      '000000010000000000000007',
      '000000010000000000000007.00000028.backup',
      '000000010000000000000008.partial',
      '00000002.history',
    ]);

    // A server whose catalog was never created: the fix is INIT.
    setup.writeConfig(
      `${readFileSync(setup.configPath, 'utf8')}\n[fresh]\nhost = 127.0.0.1\nuser = postgres\ncluster_owner = postgres\n`,
    );
    const noInit = await setup.bart(['ARCHIVE-PUSH', '-s', 'fresh', src]);
    assert.notEqual(noInit.code, 0);
    assert.match(noInit.stderr, /archive path ".*fresh\/archived_wals" is not usable .*run "bart INIT" to create it/);
  } finally {
    setup.cleanup();
  }
});

test('ARCHIVE-GET: a present file, a .gz file and an absent file', async () => {
  const { setup, archiveDir, work } = await archiveSetup();
  try {
    const content = randomBytes(SEGMENT_SIZE);
    writeOwned(join(work, '000000010000000000000010'), content);
    assert.equal((await setup.bart(['ARCHIVE-PUSH', '-s', 'arch', join(work, '000000010000000000000010')])).code, 0);
    const got = await setup.bart(['ARCHIVE-GET', '-s', 'arch', '000000010000000000000010', join(work, 'RECOVERYXLOG')]);
    assert.equal(got.code, 0, got.stderr);
    assert.ok(readFileSync(join(work, 'RECOVERYXLOG')).equals(content));

    // MANAGE compresses archived WAL when wal_compression is enabled; ARCHIVE-GET reads it transparently.
    writeOwned(join(archiveDir, '000000010000000000000011.gz'), gzipSync(content));
    const gz = await setup.bart(['ARCHIVE-GET', '-s', 'arch', '000000010000000000000011', join(work, 'FROMGZ')]);
    assert.equal(gz.code, 0, gz.stderr);
    assert.ok(readFileSync(join(work, 'FROMGZ')).equals(content));

    // Absent: exit 1, one quiet line, no ERROR (PostgreSQL asks for files that do not exist).
    const absent = await setup.bart(['ARCHIVE-GET', '-s', 'arch', '00000003.history', join(work, 'RECOVERYHISTORY')]);
    assert.equal(absent.code, 1);
    assert.equal(absent.stderr, '');
    assert.match(
      absent.stdout,
      /^INFO:\s+WAL file "00000003\.history" is not in the archive of server "arch" \(.*\)\n$/,
    );
    assert.throws(() => statSync(join(work, 'RECOVERYHISTORY')));

    const bad = await setup.bart(['ARCHIVE-GET', '-s', 'arch', '../../etc/passwd', join(work, 'X')]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /^ERROR:\s+WAL file name "\.\.\/\.\.\/etc\/passwd" is not a WAL archive file name/);
    assert.deepEqual(
      readdirSync(work).filter((f) => f.startsWith('.')),
      [],
      'no temp files left next to the destination',
    );
  } finally {
    setup.cleanup();
  }
});

const firstVersion = versionsUnderTest()[0]!;
test(`ARCHIVE-GET as restore_command: PostgreSQL ${firstVersion} recovers a cold copy from WAL that INIT's archive_command archived`, async () => {
  const cluster = await TestCluster.create({ version: firstVersion });
  const setup = createBartSetup();
  const copyDir = makeTempDir('coldcopy');
  let restored: TestCluster | undefined;
  try {
    setup.writeConfig(`${readFileSync(setup.configPath, 'utf8')}\n${serverSection(cluster, 'src')}`);
    assert.equal((await setup.bart(['INIT', '-s', 'src'])).code, 0);
    await cluster.restart();
    await cluster.query('CREATE TABLE t (id int)');
    await cluster.query('INSERT INTO t VALUES (0)');
    await cluster.stop();
    const copy = join(copyDir, 'data');
    await runOk('cp', ['-a', cluster.dataDir, copy]);
    await cluster.start();
    await cluster.query('INSERT INTO t SELECT g FROM generate_series(1, 1000) g');
    const last = await cluster.switchWal();
    const archiveDir = join(setup.backupPath, 'src', 'archived_wals');
    await waitFor(`${last} to be archived`, () => readdirSync(archiveDir).includes(last), {
      timeoutMs: 30_000,
      intervalMs: 200,
    });
    await cluster.stop();

    // Everything the copy needs beyond its own state must come through ARCHIVE-GET.
    for (const f of readdirSync(join(copy, 'pg_wal')))
      if (/^[0-9A-F]{24}$/.test(f)) removeTree(join(copy, 'pg_wal', f));
    const restoreCommand = `${process.execPath} ${join(REPO_ROOT, 'bin', 'bart.js')} -c ${setup.configPath} ARCHIVE-GET -s src %f %p`;
    appendFileSync(join(copy, 'postgresql.auto.conf'), `archive_mode = 'off'\nrestore_command = '${restoreCommand}'\n`);
    writeOwned(join(copy, 'recovery.signal'), '');
    restored = await TestCluster.create({ version: firstVersion, dataDir: copy });
    const copyCluster = restored;
    const recovered = async () => (await copyCluster.scalar('SELECT pg_is_in_recovery()')) !== true;
    await waitFor('the end of recovery', recovered, { timeoutMs: 60_000, intervalMs: 200 });
    assert.equal(Number(await restored.scalar('SELECT count(*) FROM t')), 1001);
    assert.match(restored.logTail(200), new RegExp(`restored log file "${last}" from archive`));
  } finally {
    await restored?.destroy();
    await cluster.destroy();
    removeTree(copyDir);
    setup.cleanup();
  }
});

test('ARCHIVE-PUSH --stdin: a whole segment is stored, a cut-off one or a bad name refused with nothing stored, the same again accepted', async () => {
  const { setup, archiveDir, work } = await archiveSetup();
  try {
    const name = '000000010000000000000021';
    // Random bytes with a long page header's xlp_seg_size: ARCHIVE-PUSH checks the count against it.
    const segment = randomBytes(SEGMENT_SIZE);
    segment.writeUInt32LE(SEGMENT_SIZE, 32);
    writeOwned(join(work, 'whole'), segment);
    writeOwned(join(work, 'cut'), segment.subarray(0, SEGMENT_SIZE - 8192));
    const viaShell = (file: string, walName = name) =>
      runShell(
        `exec ${process.execPath} ${join(REPO_ROOT, 'bin', 'bart.js')} -c ${setup.configPath} ARCHIVE-PUSH -s arch --stdin '${walName}' < ${join(work, file)}`,
      );

    let r = await viaShell('cut');
    assert.notEqual(r.code, 0);
    assert.match(
      r.stderr,
      /^ERROR:\s+"000000010000000000000021" \(from stdin\) is 16769024 bytes, not the complete WAL segment of 16777216 bytes its header announces/,
    );
    assert.deepEqual(readdirSync(archiveDir), [], 'nothing stored, no temp file left');
    r = await viaShell('whole', '../000000010000000000000021');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /^ERROR:\s+WAL file name "\.\.\/000000010000000000000021" is not a WAL archive file name/);

    r = await viaShell('whole');
    assert.equal(r.code, 0, r.stderr);
    assert.ok(readFileSync(join(archiveDir, name)).equals(segment));
    assert.equal(statSync(join(archiveDir, name)).mode & 0o777, 0o600);
    r = await viaShell('whole');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /is already archived for server "arch" with identical content/);
    const other = Buffer.from(segment);
    other[SEGMENT_SIZE - 1] ^= 0xff;
    writeOwned(join(work, 'other'), other);
    r = await viaShell('other');
    assert.notEqual(r.code, 0);
    assert.match(
      r.stderr,
      /already exists in the archive with different content than "000000010000000000000021" \(from stdin\)/,
    );
    assert.ok(readFileSync(join(archiveDir, name)).equals(segment), 'the archived file is untouched');
    assert.deepEqual(readdirSync(archiveDir), [name]);
  } finally {
    setup.cleanup();
  }
});
