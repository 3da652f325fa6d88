import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, watch, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT, versionsUnderTest } from './harness/pg-binaries.js';
import { removeTree, testUserIds } from './harness/os.js';
import { createRestoreSource, freshPath, startRestored, waitPromoted, type RestoreSource } from './harness/restore.js';

const version = versionsUnderTest()[0]!;
const DAY = 86_400_000;

interface ShownBackup {
  id: string;
  name: string | null;
  parent: string | null;
  status: string;
}
interface Listing {
  server: string;
  obsoleteBackups: { id: string; incrementals: string[] }[];
  wal: { files: number; names: string[]; skipped: boolean };
  leftovers: { kind: string; path: string }[];
}

/** Every file under the server catalog with its size and a hash of every backupinfo: dry runs must leave it identical. */
function catalogState(dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const name of readdirSync(join(dir, rel)).sort()) {
      const p = rel ? `${rel}/${name}` : name;
      const st = statSync(join(dir, p));
      const extra =
        name === 'backupinfo'
          ? createHash('sha256')
              .update(readFileSync(join(dir, p)))
              .digest('hex')
          : String(st.mtimeMs);
      out.push(`${p} ${st.isDirectory() ? 'dir' : st.size} ${st.isDirectory() ? '' : extra}`);
      if (st.isDirectory()) walk(p);
    }
  };
  walk('');
  return out;
}

/** A pid that certainly belongs to no process any more. */
function deadPid(): number {
  const r = spawnSync('sh', ['-c', 'echo $$']);
  return Number(r.stdout.toString().trim());
}

describe(`backup lifecycle on PostgreSQL ${version}: retention, MANAGE, DELETE, WAL retention, INIT -r`, () => {
  let src: RestoreSource;
  let serverDir: string;
  const ids: string[] = [];
  const bart = async (args: string[], env: NodeJS.ProcessEnv = {}) => src.setup.bart(args, env);
  const ok = async (args: string[], env: NodeJS.ProcessEnv = {}) => {
    const r = await bart(args, env);
    assert.equal(r.code, 0, `bart ${args.join(' ')} failed:\n${r.stdout}\n${r.stderr}`);
    return r;
  };
  const shown = async (): Promise<Map<string, ShownBackup>> =>
    new Map(
      (JSON.parse((await ok(['SHOW-BACKUPS', '-s', src.server, '--output', 'json'])).stdout) as ShownBackup[]).map(
        (b) => [b.id, b],
      ),
    );
  const setPolicy = (policy: string, extra: Record<string, string> = {}) =>
    src.configure(src.cluster, { retention_policy: policy, ...extra });
  const archived = () => readdirSync(src.archivePath).sort();

  before(async () => {
    src = await createRestoreSource(version, 'pg');
    serverDir = join(src.setup.backupPath, src.server);
    await src.cluster.query('CREATE TABLE t (id int PRIMARY KEY, note text)');
    for (let i = 1; i <= 4; i++) {
      await src.cluster.query('INSERT INTO t SELECT g, $1 FROM generate_series($2::int, $2::int + 999) g', [
        `before backup ${i}`,
        i * 1000,
      ]);
      await src.archiveCurrentWal();
      ids.push(await src.backup(['-F', 'p', '--backup-name', `b${i}`]));
    }
  });
  after(async () => {
    await src?.destroy();
  });

  test('keep, policy N BACKUPS, fabricated incremental chain, dry runs, -l JSON, -d with WAL retention and leftovers', async () => {
    const [b1, b2, b3, b4] = ids as [string, string, string, string];
    // Two incrementals chained on b1 (copies of b1 with a parent line: the catalog treats them as a chain).
    const i1 = String(BigInt(b1) + 1n);
    const i2 = String(BigInt(b1) + 2n);
    for (const [child, parent] of [
      [i1, b1],
      [i2, i1],
    ] as const) {
      cpSync(join(serverDir, b1), join(serverDir, child), { recursive: true });
      const info = readFileSync(join(serverDir, child, 'backupinfo'), 'utf8')
        .replace(`BACKUP IDENTIFIER: ${b1}`, `BACKUP IDENTIFIER: ${child}`)
        .replace('BACKUP PARENT: none', `BACKUP PARENT: ${parent}`)
        .replace('BACKUP NAME: b1', 'BACKUP NAME: none');
      writeFileSync(join(serverDir, child, 'backupinfo'), info);
    }
    // Leftovers of crashed commands: a failed backup, an interrupted delete, a temp file in the archive.
    const dead = deadPid();
    const failed = join(serverDir, `${BigInt(b4) + 5n}.partial`);
    cpSync(join(serverDir, b4), failed, { recursive: true });
    writeFileSync(
      join(failed, 'backupinfo'),
      readFileSync(join(failed, 'backupinfo'), 'utf8').replace('BACKUP STATUS: active', 'BACKUP STATUS: in progress') +
        `PID: ${dead}\n`,
    );
    // A dead BACKUP whose PID now belongs to a live process (here: this test runner): no lock is held, so it is dead too.
    const reused = join(serverDir, `${BigInt(b4) + 6n}.partial`);
    cpSync(failed, reused, { recursive: true });
    writeFileSync(
      join(reused, 'backupinfo'),
      readFileSync(join(failed, 'backupinfo'), 'utf8').replace(`PID: ${dead}`, `PID: ${process.pid}`),
    );
    mkdirSync(join(serverDir, '12345.deleting', 'base'), { recursive: true });
    const temp = join(src.archivePath, `.000000010000000000000001.gz.tmp-${dead}-abc`);
    writeFileSync(temp, 'half');
    const ids_ = testUserIds();
    if (ids_) spawnSync('chown', ['-R', `${ids_.uid}:${ids_.gid}`, serverDir]);

    await ok(['MANAGE', '-s', src.server, '-c', 'keep', '-i', 'b2']);
    assert.equal((await shown()).get(b2)!.status, 'keep');
    const incr = await bart(['MANAGE', '-s', src.server, '-c', 'keep', '-i', i1]);
    assert.notEqual(incr.code, 0);
    assert.match(incr.stderr, /ERROR: .*incremental backup; its status follows its full backup/);

    setPolicy('1 BACKUPS');
    let before_ = catalogState(serverDir);
    const dry = await ok(['MANAGE', '-s', src.server, '-n']);
    assert.match(dry.stdout, new RegExp(`\\(dry run\\) would mark backup ${b1} \\(b1\\) as obsolete`));
    assert.deepEqual(catalogState(serverDir), before_, 'MANAGE -n changed nothing');

    await ok(['MANAGE', '-s', src.server]);
    let s = await shown();
    assert.deepEqual(
      [b1, i1, i2, b2, b3, b4].map((id) => s.get(id)!.status),
      ['obsolete', 'obsolete', 'obsolete', 'keep', 'obsolete', 'active'],
    );

    const listing = (
      JSON.parse((await ok(['MANAGE', '-s', src.server, '-l', '--output', 'json'])).stdout) as Listing[]
    )[0]!;
    assert.deepEqual(
      listing.obsoleteBackups.map((b) => [b.id, b.incrementals]),
      [
        [b1, [i1, i2]],
        [b3, []],
      ],
    );
    const b2Start = readFileSync(join(serverDir, b2, 'backupinfo'), 'utf8').match(/^START WAL LOCATION: (\w+)$/m)![1]!;
    const segs = archived().filter((n) => /^[0-9A-F]{24}$/.test(n));
    assert.deepEqual(
      listing.wal.names.filter((n) => /^[0-9A-F]{24}$/.test(n)),
      segs.filter((n) => n < b2Start),
      'WAL before the oldest retained backup (b2, keep) is listed for deletion',
    );
    assert.ok(listing.wal.files > 0);
    assert.deepEqual(listing.leftovers.map((l) => l.kind).sort(), [
      'deleting-backup',
      'failed-backup',
      'failed-backup',
      'temp-file',
    ]);

    before_ = catalogState(serverDir);
    const archiveBefore = archived();
    const dryD = await ok(['MANAGE', '-s', src.server, '-d', '-n']);
    assert.match(dryD.stdout, /\(dry run\) would delete backup/);
    assert.deepEqual(catalogState(serverDir), before_, 'MANAGE -d -n changed nothing');
    assert.deepEqual(archived(), archiveBefore);

    await ok(['MANAGE', '-s', src.server, '-d']);
    const left = readdirSync(serverDir).sort();
    assert.deepEqual(
      left.filter((n) => /^\d/.test(n)),
      [b2, b4].sort(),
      'obsolete backups, their chain and the leftovers are gone',
    );
    assert.ok(!existsSync(temp));
    const after_ = archived().filter((n) => /^[0-9A-F]{24}$/.test(n));
    assert.equal(after_[0], b2Start, 'archive starts at the oldest retained backup start segment');
    assert.deepEqual(
      after_,
      segs.filter((n) => n >= b2Start),
      'everything from there on stays',
    );
    // Gap-free from there to the newest segment.
    for (let k = 1; k < after_.length; k++)
      assert.equal(
        parseInt(after_[k]!.slice(16), 16),
        parseInt(after_[k - 1]!.slice(16), 16) + 1,
        `gap after ${after_[k - 1]}`,
      );
  });

  test('wal_compression gzips archived segments; the oldest retained backup restores with PITR to the newest archived WAL', async () => {
    const [, b2] = ids as [string, string];
    await src.cluster.query("INSERT INTO t VALUES (999999, 'after every backup')");
    await src.archiveCurrentWal();
    const newest = archived()
      .filter((n) => /^[0-9A-F]{24}$/.test(n))
      .pop()!;
    // Segments younger than 10 s are left alone (an archive_command may still be writing them): age them.
    const old = new Date(Date.now() - 60_000);
    for (const n of archived()) spawnSync('touch', ['-d', old.toISOString(), join(src.archivePath, n)]);
    setPolicy('1 BACKUPS', { wal_compression: 'enabled' });
    const before_ = catalogState(serverDir);
    await ok(['MANAGE', '-s', src.server, '-n']);
    assert.deepEqual(catalogState(serverDir), before_);
    await ok(['MANAGE', '-s', src.server]);
    const names = archived();
    assert.ok(!names.some((n) => /^[0-9A-F]{24}$/.test(n)), `plain segments left: ${names.join(' ')}`);
    assert.ok(names.includes(`${newest}.gz`));
    assert.ok(!names.some((n) => n.includes('.tmp-')));
    for (const n of names.filter((x) => x.endsWith('.backup') || x.endsWith('.history'))) assert.ok(!n.endsWith('.gz'));

    const path = freshPath(src, 'pitr');
    const r = await src.restore(['-i', b2, '-p', path]);
    assert.equal(r.code, 0, r.stderr);
    const restored = await startRestored(version, path);
    try {
      await waitPromoted(restored);
      assert.equal(
        await restored.scalar('SELECT note FROM t WHERE id = 999999'),
        'after every backup',
        'replayed up to the newest archived WAL',
      );
      assert.equal(Number(await restored.scalar('SELECT count(*) FROM t')), 4001);
    } finally {
      await restored.destroy();
      removeTree(path);
    }
    const verify = await ok(['VERIFY-CHKSUM', '-s', src.server]);
    assert.doesNotMatch(verify.stdout, /FAILED/);
  });

  test('INIT -r rebuilds a lost and a damaged backupinfo with names; keep survives when readable', async () => {
    const [, b2, , b4] = ids as [string, string, string, string];
    const original = readFileSync(join(serverDir, b4, 'backupinfo'), 'utf8');
    writeFileSync(join(serverDir, b4, 'backupinfo'), original.slice(0, 200));
    spawnSync('rm', [join(serverDir, b2, 'backupinfo')]);
    await ok(['INIT', '-r', '-s', src.server, '-i', 'all']);
    assert.equal(readFileSync(join(serverDir, b4, 'backupinfo'), 'utf8'), original, 'rebuilt byte for byte');
    const s = await shown();
    assert.equal(s.get(b2)!.name, 'b2');
    assert.equal(s.get(b2)!.status, 'active', 'a lost backupinfo comes back active');
    const again = await ok(['INIT', '-r', '-s', src.server, '-i', 'b4']);
    assert.match(again.stdout, /matches the manifest/);
    await ok(['MANAGE', '-s', src.server, '-c', 'keep', '-i', b2]);
  });

  test('RESTORE is a reader: DELETE and MANAGE -d refuse while it runs, naming it; other RESTOREs and the server lock go on; stale readers are taken over', async () => {
    const [, b2, , b4] = ids as [string, string, string, string];
    // A deleting command holds the server lock (a fake holder with a live pid): RESTORE refuses before writing.
    const lockFile = join(serverDir, 'backup.lock');
    writeFileSync(
      lockFile,
      JSON.stringify({ pid: process.pid, command: 'MANAGE -d', started: '2026-01-02T03:04:05.000Z' }),
    );
    const underDelete = freshPath(src, 'under-delete');
    const refusedRestore = await src.restore(['-i', b4, '-p', underDelete]);
    spawnSync('rm', ['-f', lockFile]);
    assert.notEqual(refusedRestore.code, 0);
    assert.match(
      refusedRestore.stderr,
      new RegExp(`MANAGE -d is running for this server \\(pid ${process.pid}, started 2026-01-02T03:04:05.000Z\\)`),
      refusedRestore.stderr,
    );
    assert.ok(!existsSync(underDelete));
    assert.deepEqual(
      readdirSync(serverDir).filter((n) => n.startsWith('restore-')),
      [],
      'the refused RESTORE unregistered',
    );

    // A real RESTORE, stopped (SIGSTOP) as soon as its reader file appears.
    const path = freshPath(src, 'reader');
    const child = spawn(
      process.execPath,
      [
        join(REPO_ROOT, 'bin', 'bart.js'),
        '-c',
        src.setup.configPath,
        'RESTORE',
        '-s',
        src.server,
        '-i',
        b4,
        '-p',
        path,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((r) => child.on('close', r));
    const readerFile = join(serverDir, `restore-${child.pid}.lock`);
    await new Promise<void>((resolvePromise, reject) => {
      const watcher = watch(serverDir, () => {
        if (!existsSync(readerFile)) return;
        process.kill(child.pid!, 'SIGSTOP');
        watcher.close();
        resolvePromise();
      });
      void exited.then(() => reject(new Error(`RESTORE ended before it was stopped: ${stderr}`)));
    });
    try {
      const reader = JSON.parse(readFileSync(readerFile, 'utf8')) as {
        pid: number;
        started: string;
        backups: string[];
        path: string;
      };
      assert.deepEqual([reader.pid, reader.backups, reader.path], [child.pid, [b4], path]);
      const refused = await bart(['DELETE', '-s', src.server, '-i', b4]);
      assert.notEqual(refused.code, 0);
      assert.match(
        refused.stderr,
        new RegExp(
          `RESTORE of backup ${b4} is running for this server \\(pid ${child.pid}, started ${reader.started.replace(/\./g, '\\.')}, into ${path}\\); DELETE would delete backups or WAL it reads`,
        ),
        refused.stderr,
      );
      const refusedManage = await bart(['MANAGE', '-s', src.server, '-d']);
      assert.notEqual(refusedManage.code, 0);
      assert.match(
        refusedManage.stderr,
        new RegExp(`RESTORE of backup ${b4} is running .*pid ${child.pid}.*MANAGE -d would delete`),
        refusedManage.stderr,
      );
      // The exclusive server lock is free (BACKUP would run), and a second RESTORE of the server goes on.
      await ok(['MANAGE', '-s', src.server, '-c', 'keep', '-i', b2]);
      const second = freshPath(src, 'second');
      const r2 = await src.restore(['-i', b4, '-p', second]);
      assert.equal(r2.code, 0, r2.stderr);
      removeTree(second);
    } finally {
      process.kill(child.pid!, 'SIGCONT');
    }
    assert.equal(await exited, 0, stderr);
    assert.ok(existsSync(join(path, 'PG_VERSION')));
    removeTree(path);
    assert.ok(existsSync(join(serverDir, b4)), 'nothing was deleted');

    // The reader file of a dead RESTORE is taken over: MANAGE -d runs and removes it.
    const stale = join(serverDir, `restore-${deadPid()}.lock`);
    writeFileSync(
      stale,
      JSON.stringify({
        pid: Number(/restore-(\d+)/.exec(stale)![1]),
        started: '2026-01-02T03:04:05.000Z',
        backups: [b4],
        path: '/nowhere',
      }),
    );
    await ok(['MANAGE', '-s', src.server, '-d']);
    assert.ok(!existsSync(stale));
  });

  test('window policies with the PGBART_NOW clock; DELETE refuses keep, deletes chains, honours -n', async () => {
    const [, b2, , b4] = ids as [string, string, string, string];
    const at = (days: number) => ({ PGBART_NOW: new Date(Number(b4) + days * DAY).toISOString() });
    setPolicy('3 DAYS');
    await ok(['MANAGE', '-s', src.server], at(2.9));
    assert.equal((await shown()).get(b4)!.status, 'active');
    setPolicy('1 WEEKS');
    await ok(['MANAGE', '-s', src.server], at(6.9));
    assert.equal((await shown()).get(b4)!.status, 'active');
    setPolicy('1 MONTHS');
    await ok(['MANAGE', '-s', src.server], at(27));
    assert.equal((await shown()).get(b4)!.status, 'active', 'less than a calendar month');
    await ok(['MANAGE', '-s', src.server], at(32));
    let s = await shown();
    assert.equal(s.get(b4)!.status, 'obsolete');
    assert.equal(s.get(b2)!.status, 'keep', 'keep never becomes obsolete');

    const refused = await bart(['DELETE', '-s', src.server, '-i', 'b2']);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /ERROR: +backup \d+ \(b2\) is marked keep .*-c nokeep -i \d+/);
    const i4 = String(BigInt(b4) + 1n);
    cpSync(join(serverDir, b4), join(serverDir, i4), { recursive: true });
    writeFileSync(
      join(serverDir, i4, 'backupinfo'),
      readFileSync(join(serverDir, i4, 'backupinfo'), 'utf8')
        .replace(`BACKUP IDENTIFIER: ${b4}`, `BACKUP IDENTIFIER: ${i4}`)
        .replace('BACKUP PARENT: none', `BACKUP PARENT: ${b4}`)
        .replace('BACKUP NAME: b4', 'BACKUP NAME: none'),
    );
    // An active incremental on the keep backup b2: DELETE -i all must leave the keep chain whole.
    const i2k = String(BigInt(b2) + 1n);
    cpSync(join(serverDir, b2), join(serverDir, i2k), { recursive: true });
    writeFileSync(
      join(serverDir, i2k, 'backupinfo'),
      readFileSync(join(serverDir, i2k, 'backupinfo'), 'utf8')
        .replace(`BACKUP IDENTIFIER: ${b2}`, `BACKUP IDENTIFIER: ${i2k}`)
        .replace('BACKUP PARENT: none', `BACKUP PARENT: ${b2}`)
        .replace('BACKUP NAME: b2', 'BACKUP NAME: none')
        .replace('BACKUP STATUS: keep', 'BACKUP STATUS: active'),
    );
    const owner = testUserIds();
    if (owner) spawnSync('chown', ['-R', `${owner.uid}:${owner.gid}`, join(serverDir, i4), join(serverDir, i2k)]);
    const before_ = catalogState(serverDir);
    const dry = await ok(['DELETE', '-s', src.server, '-i', 'b4', '-n']);
    assert.match(dry.stdout, new RegExp(`would delete incremental backup ${i4} .*incremental descendant of ${b4}`));
    assert.deepEqual(catalogState(serverDir), before_, 'DELETE -n changed nothing');
    const all = await ok(['DELETE', '-s', src.server, '-i', 'all']);
    assert.match(all.stdout, /marked keep: not deleted/);
    assert.deepEqual(
      readdirSync(serverDir)
        .filter((n) => /^\d/.test(n))
        .sort(),
      [b2, i2k],
    );
    const b2Start = readFileSync(join(serverDir, b2, 'backupinfo'), 'utf8').match(/^START WAL LOCATION: (\w+)$/m)![1]!;
    assert.ok(
      archived().some((n) => n.startsWith(b2Start)),
      'the kept backup still has its WAL',
    );
    await ok(['MANAGE', '-s', src.server, '-c', 'nokeep', '-i', 'all']);
    assert.equal((await shown()).get(b2)!.status, 'active');
    const last = await ok(['DELETE', '-s', src.server, '-i', b2]);
    assert.match(last.stdout, new RegExp(`deleting incremental backup ${i2k} .*incremental descendant of ${b2}`));
    assert.deepEqual(
      readdirSync(serverDir).filter((n) => /^\d/.test(n)),
      [],
    );
    assert.ok(!archived().some((n) => /^[0-9A-F]{24}(\.gz)?$/.test(n)), 'no backup left: no WAL kept');
  });
});
