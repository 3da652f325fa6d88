import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createBartSetup, serverSection, listedBackups } from './harness/bart.js';
import { TestCluster } from './harness/cluster.js';
import { createIncrementalSource, takeBackup } from './harness/incremental.js';
import { removeTree, testUserIds, type RunResult } from './harness/os.js';
import { versionsUnderTest } from './harness/pg-binaries.js';
import { freshPath } from './harness/restore.js';
import { BART_TEST_USER, TestSshd } from './harness/sshd.js';
import { sliced } from './harness/test-size.js';

/**
 * The untrusted-path boundary seen from outside: a database host whose cluster owner's account lies
 * in its directory listings (over the real loopback sshd), and a catalog whose manifests were
 * rewritten with a valid end line. Each case must be refused with one clear `ERROR:` line naming the
 * entry and where it came from, and nothing may be written outside the catalog or the restore path.
 * Every "outside" target of these cases is a private temp directory (made writable by everyone, so a
 * build without the guard shows the escape instead of a permission error).
 */

const BART = BART_TEST_USER;
const version = versionsUnderTest()[0]!;

/** Asserts a refusal: non-zero exit, one `ERROR:` line holding every `names`, no stack trace. */
function assertRefused(r: RunResult, what: string, names: string[]): void {
  const out = `${r.stdout}\n${r.stderr}`;
  assert.notEqual(r.code, 0, `${what}: must fail\n${out}`);
  const errors = r.stderr.split('\n').filter((l) => l.startsWith('ERROR:'));
  assert.equal(errors.length, 1, `${what}: one ERROR line\n${out}`);
  for (const n of names) assert.ok(errors[0]!.includes(n), `${what}: the error names ${n}\n${out}`);
  assert.doesNotMatch(out, /\n\s+at [^\n]*\(?[^\n]*:\d+:\d+\)?/, `${what}: no stack trace\n${out}`);
}

/** Every path under `dir` (relative, with type and size), skipping `skip` names; ['<absent>'] when missing. */
function tree(dir: string, skip: string[] = []): string[] {
  if (!existsSync(dir)) return ['<absent>'];
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const name of readdirSync(join(dir, rel)).sort()) {
      if (skip.includes(name)) continue;
      const p = rel ? `${rel}/${name}` : name;
      const st = lstatSync(join(dir, p));
      out.push(`${p} ${st.isDirectory() ? 'dir' : st.isSymbolicLink() ? `-> ${readlinkSync(join(dir, p))}` : st.size}`);
      if (st.isDirectory()) walk(p);
    }
  };
  walk('');
  return out;
}

/** A directory any user may write in: the "outside" that a missing guard would write to. */
function sentinelDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'pgbart-hostile-'));
  chmodSync(dir, 0o777);
  writeFileSync(join(dir, 'keep'), 'untouched\n');
  return dir;
}

const backups = listedBackups;

/**
 * The crafted `find`: runs the real one and, when it lists the data directory named in plan.json,
 * drops the entries the plan names and appends the plan's entries in the same NUL-framed format as
 * `-printf '%y %m %s %T@ %P\0%l\0'` (the ssh data host sorts the listing itself).
 */
function findWrapper(): string {
  return `#!${process.execPath}
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const args = process.argv.slice(2);
const r = spawnSync('/usr/bin/find', args, { maxBuffer: 1 << 30 });
let plan;
try { plan = JSON.parse(fs.readFileSync(__dirname + '/plan.json', 'utf8')); } catch { plan = undefined; }
let out = r.stdout;
if (plan && args[0] === '-H' && args[1] === plan.root && args.includes('-printf')) {
  const fields = out.toString('utf8').split('\\0');
  let text = '';
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const path = fields[i].split(' ').slice(4).join(' ');
    if (!plan.drop.includes(path)) text += fields[i] + '\\0' + fields[i + 1] + '\\0';
  }
  for (const e of plan.add) text += e.y + ' ' + e.mode + ' ' + e.size + ' 1700000000.0 ' + e.path + '\\0' + (e.target || '') + '\\0';
  out = Buffer.from(text, 'utf8');
}
fs.writeSync(1, out);
fs.writeSync(2, r.stderr);
process.exitCode = r.status === null ? 1 : r.status;
`;
}

interface PlanEntry {
  y: 'f' | 'd' | 'l';
  mode: string;
  size: number;
  path: string;
  target?: string;
}

test(`hostile database host (PostgreSQL ${version}): crafted listings over ssh are refused by BACKUP of every format; a directory swapped for a symlink between links of a chain is restored without writing through it`, async () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  try {
    const sentinel = sentinelDir();
    cleanups.push(() => removeTree(sentinel));
    const wrapDir = mkdtempSync(join(tmpdir(), 'pgbart-hostile-bin-'));
    chmodSync(wrapDir, 0o755);
    cleanups.push(() => removeTree(wrapDir));
    writeFileSync(join(wrapDir, 'find'), findWrapper(), { mode: 0o755 });
    const planFile = join(wrapDir, 'plan.json');

    // The cluster owner's sessions find the crafted `find` first.
    const sshd = await TestSshd.start(['postgres', BART], {
      setEnv: { postgres: { PATH: `${wrapDir}:/usr/local/bin:/usr/bin:/bin` } },
    });
    cleanups.push(() => sshd.stop());
    sshd.authorize(BART, 'postgres');
    sshd.authorize('postgres', BART);
    const cluster = await TestCluster.create({ version, conf: { archive_mode: 'on' } });
    cleanups.push(() => cluster.destroy());
    const dataDir = cluster.dataDir;
    const host = `postgres@${sshd.alias}`;
    const setPlan = (drop: string[], add: PlanEntry[]) =>
      writeFileSync(planFile, JSON.stringify({ root: dataDir, drop, add }), { mode: 0o644 });
    const clearPlan = () => rmSync(planFile, { force: true });

    const setup = createBartSetup({ bart_host: `${BART}@${sshd.alias}` });
    cleanups.push(() => setup.cleanup());
    setup.writeConfig(
      `${readFileSync(setup.configPath, 'utf8')}\n${serverSection(cluster, 'Rem', { remote_host: host, allow_incremental_backups: 'enabled' })}`,
    );
    execFileSync('chown', ['-R', `${BART}:`, setup.dir]);
    const init = await setup.bart(['INIT', '-s', 'rem']);
    assert.equal(init.code, 0, init.stderr);

    // A real directory of the data directory, which the listing later presents as a symlink (case 5).
    const owner = testUserIds();
    const swapDir = join(dataDir, 'swapdir');
    mkdirSync(swapDir, { mode: 0o700 });
    writeFileSync(join(swapDir, 'f'), 'real file of the full backup\n', { mode: 0o600 });
    if (owner) for (const p of [swapDir, join(swapDir, 'f')]) chownSync(p, owner.uid, owner.gid);

    // The wrapper is in place but passes the listing through: a good full backup.
    const good = await setup.bart(['BACKUP', '-s', 'rem', '-F', 'p', '--backup-name', 'good']);
    assert.equal(good.code, 0, `${good.stdout}\n${good.stderr}`);
    await cluster.query('CREATE TABLE t AS SELECT generate_series(1, 1000) AS v');
    await cluster.query('SELECT txid_current()');
    await cluster.query('SELECT pg_switch_wal()');
    const before = await backups(setup, 'rem');
    assert.deepEqual(
      before.map((b) => [b.name, b.status]),
      [['good', 'active']],
    );

    const catalog = join(setup.backupPath, 'rem');
    // The `..` entry resolves, from the data directory, to a real file in the sentinel directory (what
    // a build without the guard would read); from a plain backup's base directory it points elsewhere.
    const ups = dataDir.split('/').length - 1;
    const dotdot = `${'../'.repeat(ups)}${sentinel.slice(1)}/escaped`;
    writeFileSync(join(sentinel, 'escaped'), 'hostile\n', { mode: 0o644 });
    const evilDir = join(dataDir, 'evil');
    const cases: {
      name: string;
      refused: string;
      add: PlanEntry[];
      drop?: string[];
      setup?: () => void;
      teardown?: () => void;
    }[] = [
      { name: '".." entry', refused: dotdot, add: [{ y: 'f', mode: '644', size: 8, path: dotdot }] },
      {
        name: 'absolute path',
        refused: `${sentinel}/absolute`,
        add: [{ y: 'f', mode: '644', size: 0, path: `${sentinel}/absolute` }],
      },
      {
        name: 'file name with a newline',
        refused: 'hostile\nname',
        add: [{ y: 'f', mode: '600', size: 0, path: 'hostile\nname' }],
      },
      {
        name: 'file below a symlink',
        refused: 'evil/x',
        // The real `evil` is a directory holding x; the listing says it is a symlink to the sentinel.
        drop: ['evil'],
        add: [{ y: 'l', mode: '777', size: 0, path: 'evil', target: sentinel }],
        setup: () => {
          mkdirSync(evilDir, { mode: 0o700 });
          writeFileSync(join(evilDir, 'x'), 'written through a symlink\n', { mode: 0o600 });
          if (owner) for (const p of [evilDir, join(evilDir, 'x')]) chownSync(p, owner.uid, owner.gid);
        },
        teardown: () => removeTree(evilDir),
      },
    ];
    const sentinelBefore = tree(sentinel);
    const formats = [
      ['-F', 't'],
      ['-F', 'p'],
      ['-F', 'p', '--parent', 'good'],
    ];
    for (const [k, c] of cases.entries()) {
      c.setup?.();
      setPlan(c.drop ?? [], c.add);
      // Every case against every format in `npm run test:long`; in `npm test` each case against one
      // format, in turn, so that every case and every format is refused at least once.
      for (const args of sliced(formats, (_, f) => f === k % formats.length)) {
        const what = `${c.name}, BACKUP ${args.join(' ')}`;
        const catalogBefore = tree(catalog, ['archived_wals']);
        const r = await setup.bart(['BACKUP', '-s', 'rem', ...args]);
        assertRefused(r, what, [JSON.stringify(c.refused), host]);
        assert.deepEqual(await backups(setup, 'rem'), before, `${what}: no new backup, active or not`);
        assert.deepEqual(tree(catalog, ['archived_wals']), catalogBefore, `${what}: nothing left in the catalog`);
        assert.deepEqual(readdirSync(setup.backupPath), ['rem'], `${what}: nothing written beside the catalog`);
        assert.deepEqual(tree(sentinel), sentinelBefore, `${what}: nothing written outside`);
      }
      c.teardown?.();
    }

    // 5. A directory of the full backup presented as a symlink (to the sentinel) in the next incremental,
    // and as a directory again in the one after. The shape is legal: each link records what it saw.
    setPlan(['swapdir', 'swapdir/f'], [{ y: 'l', mode: '777', size: 0, path: 'swapdir', target: sentinel }]);
    const i1 = await setup.bart(['BACKUP', '-s', 'rem', '-F', 'p', '--parent', 'good', '--backup-name', 'swap1']);
    assert.equal(i1.code, 0, `${i1.stdout}\n${i1.stderr}`);
    clearPlan();
    writeFileSync(join(swapDir, 'f'), 'the directory is back\n');
    const i2 = await setup.bart(['BACKUP', '-s', 'rem', '-F', 'p', '--parent', 'swap1', '--backup-name', 'swap2']);
    assert.equal(i2.code, 0, `${i2.stdout}\n${i2.stderr}`);
    const parent = mkdtempSync(join(tmpdir(), 'pgbart-hostile-restore-'));
    chmodSync(parent, 0o755);
    execFileSync('chown', [`${BART}:`, parent]);
    cleanups.push(() => removeTree(parent));
    // Chain full → swap1: the restored directory of the full is replaced by the symlink, not written through.
    const r1 = await setup.bart(['RESTORE', '-s', 'rem', '-i', 'swap1', '-p', join(parent, 'r1')]);
    assert.equal(r1.code, 0, `${r1.stdout}\n${r1.stderr}`);
    assert.ok(
      lstatSync(join(parent, 'r1', 'swapdir')).isSymbolicLink(),
      'swap1 restores swapdir as the symlink it listed',
    );
    assert.equal(readlinkSync(join(parent, 'r1', 'swapdir')), sentinel);
    assert.deepEqual(tree(sentinel), sentinelBefore, 'the restore of swap1 wrote nothing through the symlink');
    // Chain full → swap1 → swap2: the symlink is replaced by a directory again, its file restored in it.
    const r2 = await setup.bart(['RESTORE', '-s', 'rem', '-i', 'swap2', '-p', join(parent, 'r2')]);
    assert.equal(r2.code, 0, `${r2.stdout}\n${r2.stderr}`);
    assert.ok(lstatSync(join(parent, 'r2', 'swapdir')).isDirectory(), 'swap2 restores swapdir as a directory');
    assert.equal(readFileSync(join(parent, 'r2', 'swapdir', 'f'), 'utf8'), 'the directory is back\n');
    assert.deepEqual(tree(sentinel), sentinelBefore, 'the restore of swap2 wrote nothing through the symlink');
  } finally {
    for (const c of cleanups.reverse()) await c();
  }
});

/** One line of manifest.jsonl, as {@link tamperManifest} edits it. */
type Line = Record<string, unknown> & { f?: Record<string, unknown> };

/**
 * Rewrites a backup's manifest.jsonl with `edit` and a recomputed end line (count of entries and
 * SHA-256 of every line before it, as readManifest checks), so that only the path checks can tell;
 * returns a function that puts the original back.
 */
function tamperManifest(backupDir: string, edit: (lines: Line[]) => Line[]): () => void {
  const file = join(backupDir, 'manifest.jsonl');
  const original = readFileSync(file);
  const lines = original
    .toString('utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Line)
    .filter((l) => !l.end);
  const edited = edit(lines).map((l) => JSON.stringify(l));
  const hash = createHash('sha256');
  for (const l of edited) hash.update(`${l}\n`);
  const entries = edited.filter((l) => l.startsWith('{"f":')).length;
  writeFileSync(file, `${edited.join('\n')}\n${JSON.stringify({ end: { entries, sha256: hash.digest('hex') } })}\n`);
  return () => writeFileSync(file, original);
}

test(`tampered manifests (PostgreSQL ${version}): RESTORE refuses before writing anything`, async () => {
  const src = await createIncrementalSource(version);
  const sentinel = sentinelDir();
  try {
    const full = await takeBackup(src, undefined, ['-F', 'p']);
    await src.cluster.query('CREATE TABLE t AS SELECT generate_series(1, 1000) AS v');
    await src.archiveCurrentWal();
    const incr = await takeBackup(src, full, ['-F', 'p']);
    const fullDir = join(src.setup.backupPath, src.server, full);
    const incrDir = join(src.setup.backupPath, src.server, incr);
    const sentinelBefore = tree(sentinel);
    const ids = testUserIds();
    /** A stored file the tampered entry points at, so a build without the guard has something to write. */
    const plant = (path: string) => {
      mkdirSync(dirname(path), { recursive: true });
      copyFileSync(join(fullDir, 'base', 'PG_VERSION'), path);
      if (ids) chownSync(path, ids.uid, ids.gid);
    };
    const rename = (from: string, to: string) => (lines: Line[]) =>
      lines.map((l) => (l.f?.path === from ? { f: { ...l.f, path: to } } : l));
    const symlinkEntry = (path: string): Line => ({
      f: { path, archive: 'base', type: 'symlink', size: 0, mode: 0o777, mtime: 0, linkTarget: sentinel },
    });
    const cases: {
      name: string;
      id: string;
      dir: string;
      refused: string[];
      edit: (lines: Line[]) => Line[];
      planted?: string;
      remove?: string;
    }[] = [
      {
        name: '".." entry',
        id: full,
        dir: fullDir,
        refused: ['../escaped'],
        edit: rename('PG_VERSION', '../escaped'),
        planted: join(fullDir, 'escaped'),
      },
      {
        name: 'file below a symlink entry',
        id: full,
        dir: fullDir,
        refused: ['evil/x', '"evil" is a symlink'],
        edit: (lines) =>
          rename(
            'PG_VERSION',
            'evil/x',
          )(lines).flatMap((l) => (l.f?.path === 'evil/x' ? [symlinkEntry('evil'), l] : [l])),
        planted: join(fullDir, 'base', 'evil', 'x'),
        remove: join(fullDir, 'base', 'evil'),
      },
      {
        name: 'symlink entry named like a directory',
        id: full,
        dir: fullDir,
        refused: ['"global"'],
        edit: (lines) =>
          lines.flatMap((l) => (l.f?.path === 'global' && l.f.type === 'dir' ? [l, symlinkEntry('global')] : [l])),
      },
      {
        name: 'incremental turning a directory of the full into a symlink outside, with files below it',
        id: incr,
        dir: incrDir,
        refused: ['"base/1" is a symlink'],
        edit: (lines) =>
          lines.map((l) =>
            l.f?.path === 'base/1' ? { f: { ...l.f, type: 'symlink', size: 0, mode: 0o777, linkTarget: sentinel } } : l,
          ),
      },
    ];
    for (const c of cases) {
      const put = tamperManifest(c.dir, c.edit);
      if (c.planted) plant(c.planted);
      const path = freshPath(src, 'restore');
      const r = await src.restore(['-i', c.id, '-p', path]);
      put();
      if (c.planted) removeTree(c.remove ?? c.planted);
      assertRefused(r, c.name, [...c.refused, `backup ${c.id}`]);
      assert.ok(!existsSync(path), `${c.name}: the restore directory was not created`);
      assert.ok(!existsSync(join(dirname(path), 'escaped')), `${c.name}: nothing written beside it`);
      assert.deepEqual(tree(sentinel), sentinelBefore, `${c.name}: nothing written through the symlink`);
    }
    // The untampered backups still restore (the cases above failed for the tampering alone).
    const ok = await src.restore(['-i', incr, '-p', freshPath(src, 'restore')]);
    assert.equal(ok.code, 0, `${ok.stdout}\n${ok.stderr}`);
  } finally {
    removeTree(sentinel);
    await src.destroy();
  }
});
