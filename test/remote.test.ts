import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createBartSetup, serverSection, type BartSetup, listedBackups } from './harness/bart.js';
import { TestCluster } from './harness/cluster.js';
import { removeTree, run, runOk, type RunResult } from './harness/os.js';
import { REPO_ROOT, versionsUnderTest } from './harness/pg-binaries.js';
import { BART_TEST_USER, TestSshd } from './harness/sshd.js';
import { e2eOnly } from './harness/test-size.js';
import { explainSshFailure } from '../src/hosts/ssh/errors.js';
import { tarFileHeader } from '../src/storage/tar-header.js';

const BART = BART_TEST_USER;

const backups = listedBackups;

/** Waits until PostgreSQL reports `walfile` (or a later one) archived. */
async function waitArchived(cluster: TestCluster, walfile: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const last = (await cluster.scalar('SELECT last_archived_wal FROM pg_stat_archiver')) as string | null;
    if (last !== null && last >= walfile) return;
    if (Date.now() > deadline) throw new Error(`${walfile} not archived within 60 s\n${cluster.logTail()}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function switchAndArchive(cluster: TestCluster): Promise<void> {
  await cluster.query('SELECT txid_current()');
  const w = (await cluster.scalar('SELECT pg_walfile_name(pg_switch_wal())')) as string;
  await waitArchived(cluster, w);
}

function partialDirs(setup: BartSetup, server: string): string[] {
  const dir = join(setup.backupPath, server);
  return existsSync(dir) ? readdirSync(dir).filter((n) => n.endsWith('.partial')) : [];
}

/** Runs bart (started as root, it becomes the BART user) without waiting, for the kill-mid-backup case. */
function bartInBackground(setup: BartSetup, args: string[]): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [join(REPO_ROOT, 'bin', 'bart.js'), '-c', setup.configPath, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      cwd: setup.dir,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolvePromise({ code, stdout, stderr }));
  });
}

const version = versionsUnderTest()[0]!;
/** The long remote story runs in `npm run test:e2e`; npm test covers its parts (the reason says where). */
const HEAVY = e2eOnly(
  'npm test covers BACKUP over ssh in hostile-host and page-checksum, RESTORE -r in delta-restore and s3-restore, ARCHIVE-PUSH over ssh in s3-e2e',
);

test(`remote server over ssh (PostgreSQL ${version}): INIT with scp archive_command, CHECK-CONFIG, full and incremental backups, RESTORE -r of full backups and chains with PITR, failures`, async (t) => {
  if (HEAVY !== false) return t.skip(HEAVY);
  const cleanups: (() => Promise<void> | void)[] = [];
  try {
    const sshd = await TestSshd.start(['postgres', BART]);
    cleanups.push(() => sshd.stop());
    sshd.authorize(BART, 'postgres'); // bart reads the data directory and restores as cluster_owner
    sshd.authorize('postgres', BART); // archive_command and restore_command scp to/from the BART host
    const cluster = await TestCluster.create({ version, conf: { archive_mode: 'on' } });
    cleanups.push(() => cluster.destroy());

    const setup = createBartSetup({ bart_host: `${BART}@${sshd.alias}` });
    const rawBart = setup.bart.bind(setup);
    setup.bart = async (args, env) => {
      const t0 = Date.now();
      const timing = process.env.PGBART_TEST_TIMING !== undefined;
      const r = await rawBart(timing && args[0] === 'BACKUP' ? ['-d', ...args] : args, env);
      if (timing)
        console.error(
          `bart ${args.join(' ')}: ${Date.now() - t0} ms, exit ${r.code}\n${r.stdout
            .split('\n')
            .filter((l) => /DEBUG/.test(l))
            .join('\n')}${r.code !== 0 ? r.stderr : ''}`,
        );
      return r;
    };
    cleanups.push(() => setup.cleanup());
    setup.writeConfig(
      `${readFileSync(setup.configPath, 'utf8')}\n${serverSection(cluster, 'Rem', { remote_host: `postgres@${sshd.alias}` })}`,
    );
    // The catalog belongs to the BART user, who is not the cluster owner.
    execFileSync('chown', ['-R', `${BART}:`, setup.dir]);

    // 1. INIT writes BART's scp archive_command (bart_host, archive path expanded) and reloads.
    const init = await setup.bart(['INIT', '-s', 'rem']);
    assert.equal(init.code, 0, init.stderr);
    const archiveDir = join(setup.backupPath, 'rem', 'archived_wals');
    assert.equal(await cluster.scalar('SHOW archive_command'), `scp %p ${BART}@${sshd.alias}:${archiveDir}/%f`);

    // 2. CHECK-CONFIG: every check succeeds, the ssh ones included; WAL arrives through scp.
    const check = await setup.bart(['CHECK-CONFIG', '-s', 'rem']);
    assert.equal(check.code, 0, `${check.stdout}\n${check.stderr}`);
    assert.match(check.stdout, new RegExp(`ssh/scp .*postgres@${sshd.alias}.*: success`), check.stdout);
    assert.match(check.stdout, /cluster_owner "postgres" can read the data files: success/, check.stdout);
    assert.match(check.stdout, /WAL archiving is working: success/, check.stdout);
    const archived = readdirSync(archiveDir).filter((n) => /^[0-9A-F]{24}$/.test(n));
    assert.ok(archived.length > 0, 'WAL arrived in the archive through scp');
    assert.equal(
      statSync(join(archiveDir, archived[0]!)).uid,
      Number(execFileSync('id', ['-u', BART], { encoding: 'utf8' })),
      'archived WAL belongs to the BART user',
    );

    // 3. Full backup over ssh; then changes, a restore point, more changes.
    // A tablespace: a second tree to walk over ssh, and pg_tblspc links to list and restore.
    const tsDir = join(cluster.baseDir, 'ts1');
    await runOk('mkdir', [tsDir]);
    await cluster.query(`CREATE TABLESPACE ts1 LOCATION '${tsDir}'`);
    await cluster.query('CREATE TABLE tts (v int) TABLESPACE ts1');
    await cluster.query('INSERT INTO tts SELECT generate_series(1, 1000)');
    const tsOid = String(await cluster.scalar("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'"));
    const tsMap = (path: string) => ['--tablespace-map', `${tsOid}=${path}`];
    await cluster.query('CREATE TABLE tx (batch int, pad text)');
    await cluster.query("INSERT INTO tx SELECT 1, repeat('x', 200) FROM generate_series(1, 20000)");
    // Dropped and truncated (shrunk by VACUUM) between the incrementals of the chain restored remotely in 5c.
    await cluster.query('CREATE TABLE tdrop AS SELECT generate_series(1, 5000) AS v');
    await cluster.query(
      "CREATE TABLE tshrink AS SELECT g AS v, repeat('s', 100) AS pad FROM generate_series(1, 20000) g",
    );
    const full = await setup.bart(['BACKUP', '-s', 'rem', '--backup-name', 'full1', '--thread-count', '2']);
    assert.equal(full.code, 0, full.stderr);
    let list = await backups(setup, 'rem');
    assert.deepEqual(
      list.map((b) => [b.name, b.status]),
      [['full1', 'active']],
    );
    assert.deepEqual(partialDirs(setup, 'rem'), []);

    await cluster.query("INSERT INTO tx SELECT 2, repeat('y', 200) FROM generate_series(1, 5000)");
    await cluster.query("SELECT pg_create_restore_point('after_batch_2')");
    await cluster.query("INSERT INTO tx SELECT 3, repeat('z', 200) FROM generate_series(1, 5000)");
    await switchAndArchive(cluster);

    // 4. Incremental backup over ssh (changed blocks read as ranges), plain format.
    setup.writeConfig(
      readFileSync(setup.configPath, 'utf8').replace(
        `remote_host = postgres@${sshd.alias}`,
        `remote_host = postgres@${sshd.alias}\nallow_incremental_backups = enabled`,
      ),
    );
    await cluster.query("UPDATE tx SET pad = 'changed' WHERE ctid = (SELECT min(ctid) FROM tx WHERE batch = 3)");
    const incr = await setup.bart(['BACKUP', '-s', 'rem', '-F', 'p', '--parent', 'full1', '--backup-name', 'incr1']);
    assert.equal(incr.code, 0, `${incr.stdout}\n${incr.stderr}`);
    list = await backups(setup, 'rem');
    assert.deepEqual(list.map((b) => b.name).sort(), ['full1', 'incr1']);
    // Restored here, the chain holds exactly what the server held.
    const localParent = mkdtempSync(join(tmpdir(), 'pgbart-remote-local-'));
    chmodSync(localParent, 0o755);
    execFileSync('chown', [`${BART}:`, localParent]);
    cleanups.push(() => removeTree(localParent));
    const localRestore = join(localParent, 'restored');
    const lr = await setup.bart([
      'RESTORE',
      '-s',
      'rem',
      '-i',
      'incr1',
      '-p',
      localRestore,
      '-c',
      ...tsMap(join(localParent, 'ts')),
    ]);
    assert.equal(lr.code, 0, lr.stderr);
    assert.match(
      lr.stdout + lr.stderr,
      new RegExp(`restoring on this host .*add -r postgres@${sshd.alias}`),
      'a local restore of a remote server says where it goes',
    );
    execFileSync('chown', ['-R', 'postgres:', localRestore, join(localParent, 'ts')]);
    const local = await TestCluster.create({ version, dataDir: localRestore });
    cleanups.push(async () => {
      await local.destroy();
      removeTree(localRestore);
    });
    await waitRecovered(local);
    assert.deepEqual(await local.query('SELECT batch, count(*)::int AS n FROM tx GROUP BY 1 ORDER BY 1'), [
      { batch: 1, n: 20000 },
      { batch: 2, n: 5000 },
      { batch: 3, n: 5000 },
    ]);
    assert.equal(await local.scalar("SELECT count(*)::int FROM tx WHERE pad = 'changed'"), 1);
    assert.equal(await local.scalar('SELECT count(*)::int FROM tts'), 1000);
    await local.destroy();

    // 5. RESTORE -r postgres@host of the full backup with PITR to the restore point: restore_command
    // scp's WAL from the BART host; the restored cluster starts and holds batches 1 and 2 only.
    const remotePath = join(cluster.baseDir, 'restored');
    const rr = await setup.bart([
      'RESTORE',
      '-s',
      'rem',
      '-i',
      'full1',
      '-p',
      remotePath,
      '-r',
      `postgres@${sshd.alias}`,
      '--target-name',
      'after_batch_2',
      '-w',
      '2',
      ...tsMap(join(cluster.baseDir, 'ts-restored')),
    ]);
    assert.equal(rr.code, 0, rr.stderr);
    assert.ok(existsSync(join(remotePath, 'PG_VERSION')));
    assert.ok(!existsSync(join(remotePath, '.pgbart-restore-incomplete')));
    assert.equal(
      statSync(join(remotePath, 'global', 'pg_control')).uid,
      statSync(cluster.dataDir).uid,
      'restored files belong to the ssh user',
    );
    assert.equal(statSync(remotePath).mode & 0o777, 0o700);
    assert.match(
      readFileSync(join(remotePath, 'postgresql.auto.conf'), 'utf8'),
      new RegExp(`restore_command = 'scp -q -o BatchMode=yes ${BART}@${sshd.alias}:`),
    );
    const restored = await TestCluster.create({ version, dataDir: remotePath });
    cleanups.push(() => restored.destroy());
    await waitPaused(restored);
    assert.deepEqual(await restored.query('SELECT batch, count(*)::int AS n FROM tx GROUP BY 1 ORDER BY 1'), [
      { batch: 1, n: 20000 },
      { batch: 2, n: 5000 },
    ]);
    assert.equal(await restored.scalar('SELECT count(*)::int FROM tts'), 1000);
    assert.equal(readlinkSync(join(remotePath, 'pg_tblspc', tsOid)), join(cluster.baseDir, 'ts-restored'));
    await restored.destroy();

    // 5b. -c copies the WAL over ssh into the restored directory (restore_command becomes a local cp).
    const copiedPath = join(cluster.baseDir, 'restored-c');
    const rc = await setup.bart([
      'RESTORE',
      '-s',
      'rem',
      '-i',
      'full1',
      '-p',
      copiedPath,
      '-r',
      `postgres@${sshd.alias}`,
      '-c',
      ...tsMap(join(cluster.baseDir, 'ts-c')),
    ]);
    assert.equal(rc.code, 0, rc.stderr);
    const copied = readdirSync(join(copiedPath, 'archived_wals')).sort();
    const segments = readdirSync(archiveDir)
      .filter((n) => /^[0-9A-F]{24}$/.test(n))
      .sort();
    assert.ok(copied.length > 0 && copied.every((n) => segments.includes(n)), `copied ${copied.join(' ')}`);
    for (const n of copied)
      assert.ok(
        readFileSync(join(copiedPath, 'archived_wals', n)).equals(readFileSync(join(archiveDir, n))),
        `${n} copied intact`,
      );
    assert.equal(copied[copied.length - 1], segments[segments.length - 1]);
    assert.match(
      readFileSync(join(copiedPath, 'postgresql.auto.conf'), 'utf8'),
      /restore_command = 'cp .*restored-c\/archived_wals'*\/%f %p'/,
    );
    removeTree(copiedPath);
    removeTree(join(cluster.baseDir, 'ts-c'));

    // 5c. RESTORE -r of a chain of depth 2 (full1 plain → incr1 plain → incr2 tar), with a table dropped,
    // one shrunk by VACUUM, one created and blocks changed between the links, and PITR to a restore
    // point after incr2: changed blocks are patched in over ssh, and the restored cluster holds exactly
    // what the source held at the restore point.
    const droppedFile = String(await cluster.scalar("SELECT pg_relation_filepath('tdrop')"));
    await cluster.query('DROP TABLE tdrop');
    await cluster.query('DELETE FROM tshrink WHERE v > 1000');
    await cluster.query('VACUUM tshrink');
    await cluster.query(
      "UPDATE tx SET pad = 'chain' WHERE batch = 2 AND pad LIKE 'y%' AND ctid IN (SELECT ctid FROM tx WHERE batch = 2 LIMIT 300)",
    );
    await cluster.query('CREATE TABLE tnew AS SELECT g AS v FROM generate_series(1, 3000) g');
    const incr2 = await setup.bart(['BACKUP', '-s', 'rem', '--parent', 'incr1', '--backup-name', 'incr2']);
    assert.equal(incr2.code, 0, `${incr2.stdout}\n${incr2.stderr}`);
    await cluster.query('INSERT INTO tnew SELECT generate_series(3001, 3500)');
    await cluster.query("SELECT pg_create_restore_point('after_incr2')");
    const snapshot = async (c: TestCluster) =>
      c.query(
        "SELECT (SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM tx t) AS tx, (SELECT md5(string_agg(t::text, ',' ORDER BY v)) FROM tshrink t) AS shrink, " +
          "(SELECT count(*)::int FROM tnew) AS tnew, (SELECT count(*)::int FROM tts) AS tts, to_regclass('tdrop') IS NULL AS dropped",
      );
    const expected = await snapshot(cluster);
    await cluster.query('INSERT INTO tnew SELECT generate_series(3501, 4000)');
    await cluster.query('DELETE FROM tx WHERE batch = 3');
    await switchAndArchive(cluster);
    const chainPath = join(cluster.baseDir, 'restored-chain');
    const rchain = await setup.bart([
      '-d',
      'RESTORE',
      '-s',
      'rem',
      '-i',
      'incr2',
      '-p',
      chainPath,
      '-r',
      `postgres@${sshd.alias}`,
      '--target-name',
      'after_incr2',
      ...tsMap(join(cluster.baseDir, 'ts-chain')),
    ]);
    assert.equal(rchain.code, 0, rchain.stderr);
    if (process.env.PGBART_TEST_TIMING)
      console.error(
        rchain.stdout
          .split('\n')
          .filter((l) => /applied incremental|patched|restored \d+ files/.test(l))
          .join('\n'),
      );
    assert.match(rchain.stdout, /patched \d+ files/, rchain.stdout);
    assert.ok(!existsSync(join(chainPath, droppedFile)), `${droppedFile} of the dropped table is removed`);
    // Deleted rows left in pages past the end would be invisible: the length itself proves the truncation.
    const shrunk = String(await cluster.scalar("SELECT pg_relation_filepath('tshrink')"));
    assert.equal(
      statSync(join(chainPath, shrunk)).size,
      statSync(join(cluster.dataDir, shrunk)).size,
      'the shrunk table is cut to its length at incr2',
    );
    assert.ok(statSync(join(chainPath, shrunk)).size < 20000 * 140, 'tshrink was shrunk by VACUUM');
    assert.equal(
      execFileSync('find', [chainPath, join(cluster.baseDir, 'ts-chain'), '-name', '*.pgbart-blocks'], {
        encoding: 'utf8',
      }),
      '',
      'no scratch files left',
    );
    assert.equal(
      statSync(join(chainPath, String(await cluster.scalar("SELECT pg_relation_filepath('tx')")))).uid,
      statSync(cluster.dataDir).uid,
      'patched files belong to the ssh user',
    );
    const chainRestored = await TestCluster.create({ version, dataDir: chainPath });
    cleanups.push(() => chainRestored.destroy());
    await waitPaused(chainRestored);
    assert.deepEqual(await snapshot(chainRestored), expected);
    await chainRestored.destroy();
    removeTree(chainPath);
    removeTree(join(cluster.baseDir, 'ts-chain'));
    // A damaged stored block of incr1 is caught on the BART host (its CRC-32C) before it is patched in
    // there, and the remote restore is removed again.
    const incr1Id = (await backups(setup, 'rem')).find((b) => b.name === 'incr1')!.id;
    const incr1Dir = join(setup.backupPath, 'rem', incr1Id);
    const patched = readFileSync(join(incr1Dir, 'manifest.jsonl'), 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('{"f"'))
      .map((l) => (JSON.parse(l) as { f: { archive: string; path: string; incr?: { runs: unknown[] } } }).f)
      .find((f) => f.archive === 'base' && f.path.startsWith('base/') && (f.incr?.runs.length ?? 0) > 0)!;
    const storedBlocks = join(incr1Dir, 'base', patched.path);
    const good = readFileSync(storedBlocks);
    const bad = Buffer.from(good);
    bad[100] = bad[100]! ^ 0xff;
    writeFileSync(storedBlocks, bad);
    const damagedPath = join(cluster.baseDir, 'restored-damaged');
    const damaged = await setup.bart([
      'RESTORE',
      '-s',
      'rem',
      '-i',
      'incr2',
      '-p',
      damagedPath,
      '-r',
      `postgres@${sshd.alias}`,
      ...tsMap(join(cluster.baseDir, 'ts-damaged')),
    ]);
    writeFileSync(storedBlocks, good);
    assert.notEqual(damaged.code, 0, damaged.stdout);
    assert.match(
      damaged.stderr,
      new RegExp(
        `incremental backup ${incr1Id}: \\S+/${incr1Id}/base: block \\d+ of "${patched.path}" has CRC \\w+, the manifest says \\w+ \\(damaged backup\\); nothing was left in`,
      ),
      damaged.stderr,
    );
    assert.ok(!existsSync(damagedPath) && !existsSync(join(cluster.baseDir, 'ts-damaged')));

    // 6. A non-empty remote path is refused before anything is written.
    const notEmpty = await setup.bart([
      'RESTORE',
      '-s',
      'rem',
      '-i',
      'full1',
      '-p',
      remotePath,
      '-r',
      `postgres@${sshd.alias}`,
    ]);
    assert.notEqual(notEmpty.code, 0, notEmpty.stdout);
    assert.match(notEmpty.stderr, /is not empty/, notEmpty.stderr);

    // 7. The BART user's key removed from the cluster owner's authorized keys: CHECK-CONFIG and
    // BACKUP say what to fix, and no backup is left behind.
    sshd.revoke(BART, 'postgres');
    const noKey = await setup.bart(['CHECK-CONFIG', '-s', 'rem']);
    assert.notEqual(noKey.code, 0, noKey.stdout);
    assert.match(
      noKey.stderr,
      new RegExp(`ssh key of "${BART}" is not authorized for postgres@${sshd.alias}.*authorized_keys`),
      noKey.stderr,
    );
    const noKeyBackup = await setup.bart(['BACKUP', '-s', 'rem']);
    assert.notEqual(noKeyBackup.code, 0, noKeyBackup.stdout);
    assert.match(noKeyBackup.stderr, /not authorized/, noKeyBackup.stderr);
    assert.equal((await backups(setup, 'rem')).length, 3);
    assert.deepEqual(partialDirs(setup, 'rem'), []);
    sshd.authorize(BART, 'postgres');

    // 8. Unknown host key: the fix says how to accept it.
    const knownHosts = sshd.knownHostsOf(BART);
    const savedKnownHosts = readFileSync(knownHosts, 'utf8');
    writeFileSync(knownHosts, '');
    const unknownKey = await setup.bart(['CHECK-CONFIG', '-s', 'rem']);
    assert.notEqual(unknownKey.code, 0, unknownKey.stdout);
    assert.match(unknownKey.stderr, /host key of .* is unknown to "pgbartbu"/, unknownKey.stderr);
    writeFileSync(knownHosts, savedKnownHosts);

    // 9. sshd killed in the middle of a backup (a large sparse file keeps it busy): a clear error,
    // no backup that looks valid, nothing partial left.
    const big = join(cluster.dataDir, 'pgbart_big_file');
    await runOk('truncate', ['-s', '3G', big]);
    const running = bartInBackground(setup, ['BACKUP', '-s', 'rem', '-z', '--backup-name', 'killed']);
    const deadline = Date.now() + 60_000;
    while (partialDirs(setup, 'rem').length === 0) {
      if (Date.now() > deadline) throw new Error('the backup did not start');
      await new Promise((r) => setTimeout(r, 50));
    }
    await new Promise((r) => setTimeout(r, 1500));
    sshd.kill();
    const killed = await running;
    if (process.env.PGBART_TEST_TIMING) console.error(killed.stderr);
    assert.notEqual(killed.code, 0, killed.stdout);
    assert.match(
      killed.stderr,
      /ssh connection to postgres@.* (was closed|closed)|lost the ssh connection/,
      killed.stderr,
    );
    assert.deepEqual(partialDirs(setup, 'rem'), []);
    await run('rm', ['-f', big]);
    await sshd.restart();
    list = await backups(setup, 'rem');
    assert.deepEqual(list.map((b) => b.name).sort(), ['full1', 'incr1', 'incr2']);

    // 10. Not enough room on the remote file system: refused before anything is written (df over ssh).
    const small = join(cluster.baseDir, 'small-fs');
    await runOk('mkdir', ['-p', small]);
    await runOk('mount', ['-t', 'tmpfs', '-o', 'size=5m', 'tmpfs', small], { asTestUser: false });
    cleanups.push(async () => {
      await run('umount', [small], { asTestUser: false });
    });
    execFileSync('chown', ['postgres:', small]);
    const tooSmall = await setup.bart([
      'RESTORE',
      '-s',
      'rem',
      '-i',
      'full1',
      '-p',
      join(small, 'r'),
      '-r',
      `postgres@${sshd.alias}`,
      ...tsMap(join(small, 'ts')),
    ]);
    assert.notEqual(tooSmall.code, 0, tooSmall.stdout);
    assert.match(tooSmall.stderr, /not enough free space/, tooSmall.stderr);
    assert.deepEqual(readdirSync(small), []);

    // 10b. The remote disk fills up during the restore (the tablespace's file system, filled right
    // after the checks passed): the error names the full disk and everything written is removed.
    const fullPath = join(cluster.baseDir, 'restore-full');
    const fillingUp = bartInBackground(setup, [
      'RESTORE',
      '-s',
      'rem',
      '-i',
      'full1',
      '-p',
      fullPath,
      '-r',
      `postgres@${sshd.alias}`,
      ...tsMap(join(small, 'ts')),
    ]);
    const fullMarker = join(fullPath, '.pgbart-restore-incomplete');
    const fillBy = Date.now() + 60_000;
    while (!existsSync(fullMarker)) {
      if (Date.now() > fillBy) throw new Error('the remote restore did not start');
      await new Promise((r) => setTimeout(r, 20));
    }
    await run('dd', ['if=/dev/zero', `of=${join(small, 'filler')}`, 'bs=64k'], { asTestUser: false });
    const diskFull = await fillingUp;
    if (process.env.PGBART_TEST_TIMING) console.error(diskFull.stderr);
    assert.notEqual(diskFull.code, 0, diskFull.stdout);
    assert.match(diskFull.stderr, /disk of postgres@.* is full|No space left on device/, diskFull.stderr);
    assert.match(diskFull.stderr, /nothing was left in/, diskFull.stderr);
    assert.ok(!existsSync(fullPath), 'the restore path is removed again');
    assert.deepEqual(readdirSync(small), ['filler']);
    await run('rm', ['-f', join(small, 'filler')], { asTestUser: false });

    // 11. sshd killed during a remote restore: a clear error, and the target never becomes a
    // directory that starts (the cleanup cannot reach it: marker kept, no PG_VERSION).
    const killedPath = join(cluster.baseDir, 'restore-killed');
    const restoring = bartInBackground(setup, [
      'RESTORE',
      '-s',
      'rem',
      '-i',
      'full1',
      '-p',
      killedPath,
      '-r',
      `postgres@${sshd.alias}`,
      ...tsMap(join(cluster.baseDir, 'ts-killed')),
    ]);
    const marker = join(killedPath, '.pgbart-restore-incomplete');
    const until = Date.now() + 60_000;
    while (!existsSync(marker)) {
      if (Date.now() > until) throw new Error('the remote restore did not start');
      await new Promise((r) => setTimeout(r, 20));
    }
    sshd.kill();
    const cut = await restoring;
    if (process.env.PGBART_TEST_TIMING) console.error(cut.stderr);
    assert.notEqual(cut.code, 0, cut.stdout);
    assert.match(cut.stderr, /ssh connection to postgres@.*(closed|lost)|lost the ssh connection/, cut.stderr);
    assert.match(cut.stderr, /could not be cleaned up: it holds an incomplete restore .* will not start/, cut.stderr);
    assert.ok(!existsSync(join(killedPath, 'PG_VERSION')), 'a half-restored directory has no PG_VERSION');
    assert.ok(existsSync(marker));
    await sshd.restart();
  } finally {
    for (const c of cleanups.reverse()) {
      try {
        await c();
      } catch {
        /* keep cleaning */
      }
    }
  }
});

test('ssh failures are explained with the fix', () => {
  const ctx = { destination: 'postgres@db1', localUser: 'bart' };
  assert.match(
    explainSshFailure('spawn ssh ENOENT (spawn ssh)', ctx),
    /ssh is not installed on this host .*apt-get install openssh-client/,
  );
  assert.match(
    explainSshFailure('Host key verification failed.', ctx),
    /host key of db1 is unknown to "bart": as "bart" run ssh postgres@db1 once/,
  );
  assert.match(
    explainSshFailure('@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@', ctx),
    /host key of db1 changed .*ssh-keygen -R db1/,
  );
  assert.match(
    explainSshFailure('postgres@db1: Permission denied (publickey).', ctx),
    /ssh key of "bart" is not authorized for postgres@db1 .*~postgres\/.ssh\/authorized_keys on db1/,
  );
  assert.match(
    explainSshFailure('ssh: connect to host db1 port 22: Connection refused', ctx),
    /no ssh server answers on db1/,
  );
  assert.match(
    explainSshFailure('ssh: Could not resolve hostname db1: Name or service not known', ctx),
    /cannot be resolved/,
  );
});

test('tar framing of the remote restore: ustar prefix and pax names that GNU tar reads back', () => {
  const names = [
    '/tmp/short/PG_VERSION',
    `/tmp/${'d'.repeat(120)}/base/16384/2619`,
    `/tmp/${'x'.repeat(90)}/${'y'.repeat(90)}/${'z'.repeat(120)}`,
  ];
  const parts: Buffer[] = [];
  for (const name of names) {
    parts.push(tarFileHeader(name.slice(1), 3, 0o600, 1_700_000_000), Buffer.from('abc'), Buffer.alloc(509));
  }
  parts.push(Buffer.alloc(1024));
  const listed = execFileSync('tar', ['-tf', '-'], { input: Buffer.concat(parts), encoding: 'utf8' })
    .trim()
    .split('\n');
  assert.deepEqual(
    listed,
    names.map((n) => n.slice(1)),
  );
});

async function waitPaused(cluster: TestCluster): Promise<void> {
  const deadline = Date.now() + 60_000;
  while ((await cluster.scalar('SELECT pg_get_wal_replay_pause_state()')) !== 'paused') {
    if (Date.now() > deadline) throw new Error(`recovery did not pause within 60 s\n${cluster.logTail()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function waitRecovered(cluster: TestCluster): Promise<void> {
  const deadline = Date.now() + 60_000;
  while ((await cluster.scalar('SELECT pg_is_in_recovery()')) === true) {
    if (Date.now() > deadline) throw new Error(`still in recovery after 60 s\n${cluster.logTail()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
