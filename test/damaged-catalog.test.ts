import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  cpSync,
  existsSync,
  readdirSync,
  readFileSync,
  statSync,
  truncateSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { createIncrementalSource } from './harness/incremental.js';
import { freshPath, type RestoreSource } from './harness/restore.js';
import { makeTempDir, removeTree, run, testUserIds } from './harness/os.js';
import { REPO_ROOT } from './harness/pg-binaries.js';

/** Output of a program that died of an error nobody caught: Node prints the stack frames. */
const STACK = /^\s+at .+[(:]\d+/m;

/** Gives the test user what the test (root) wrote into the catalog. */
function chownToTestUser(path: string): void {
  const ids = testUserIds();
  if (ids) spawnSync('chown', ['-R', `${ids.uid}:${ids.gid}`, path]);
}

/** Cuts a file to half its size: the end of a stored unit or archive is gone. */
function truncateHalf(path: string): void {
  truncateSync(path, Math.floor(statSync(path).size / 2));
}

/** The VERIFY column of each backup in VERIFY-CHKSUM's table. */
function verifyRows(stdout: string): Map<string, string> {
  const rows = new Map<string, string>();
  for (const m of stdout.matchAll(/^\s*\S+\s+(\d+)\s+(OK|FAILED.*)$/gm)) rows.set(m[1]!, m[2]!.trim());
  return rows;
}

/** The first stored file of a plain backup listed in its manifest, bigger than `min` bytes, with `ext`. */
function plainFile(dir: string, ext: string, min: number, incremental = false): string {
  for (const line of readFileSync(join(dir, 'manifest.jsonl'), 'utf8').split('\n')) {
    if (!line.startsWith('{"f"')) continue;
    type Entry = { path: string; archive: string; type: string; size: number; incr?: unknown };
    const f = (JSON.parse(line) as { f: Entry }).f;
    if (f.type !== 'file' || f.archive !== 'base' || f.size < min || (incremental && !f.incr)) continue;
    const stored = join('base', f.path) + ext;
    if (existsSync(join(dir, stored))) return stored;
  }
  throw new Error(`no stored file of at least ${min} bytes in ${dir}`);
}

const version = 15;

describe(`damaged backups and catalogs (PostgreSQL ${version})`, () => {
  let src: RestoreSource;
  let serverDir: string;
  const id: Record<string, string> = {};

  before(async () => {
    src = await createIncrementalSource(version);
    serverDir = join(src.setup.backupPath, src.server);
    await src.cluster.query('CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g');
    id.good = await src.backup(['-F', 't']);
    id.missing = await src.backup(['-F', 'p']);
    id.tar = await src.backup(['-F', 't']);
    id.gzip = await src.backup(['-F', 't', '-z']);
    id.lz4 = await src.backup(['-F', 't', '--compress', 'lz4']);
    id.zstd = await src.backup(['-F', 'p', '--compress', 'zstd']);
    id.manifest = await src.backup(['-F', 't']);
    await src.cluster.query('UPDATE t SET v = v || v WHERE id % 7 = 0');
    await src.archiveCurrentWal();
    id.incremental = await src.backup(['-F', 'p', '--parent', id.good]);
  });
  after(async () => {
    await src?.destroy();
  });

  test('VERIFY-CHKSUM fails each damaged backup with the file at fault, goes on, exits non-zero', async () => {
    const expected: Record<string, RegExp> = {};
    // A stored file gone (plain format).
    const gone = plainFile(join(serverDir, id.missing!), '', 1);
    unlinkSync(join(serverDir, id.missing!, gone));
    expected.missing = new RegExp(`^FAILED \\(${gone.replace(/[.]/g, '\\.')}: missing`);
    // A tar archive cut in the middle (no compression).
    truncateHalf(join(serverDir, id.tar!, 'base.tar'));
    expected.tar = /^FAILED \(base\.tar: /;
    // Compressed units cut in the middle: gzip and lz4 tar archives, a zstd plain file.
    truncateHalf(join(serverDir, id.gzip!, 'base.tar.gz'));
    expected.gzip = /^FAILED \(base\.tar\.gz: /;
    truncateHalf(join(serverDir, id.lz4!, 'base.tar.lz4'));
    expected.lz4 = /^FAILED \(base\.tar\.lz4: /;
    const zst = plainFile(join(serverDir, id.zstd!), '.zst', 100_000);
    truncateHalf(join(serverDir, id.zstd!, zst));
    expected.zstd = new RegExp(`^FAILED \\(${zst.replace(/[.]/g, '\\.')}: cannot be read \\(.*(frame|end)`);
    // One manifest line changed.
    const manifestPath = join(serverDir, id.manifest!, 'manifest.jsonl');
    const lines = readFileSync(manifestPath, 'utf8').split('\n');
    const at = lines.findIndex((l) => l.includes('"path":"PG_VERSION"'));
    lines[at] = lines[at]!.replace('"path":"PG_VERSION"', '"path":"PG_VERSIOM"');
    writeFileSync(manifestPath, lines.join('\n'));
    expected.manifest = /^FAILED \(manifest\.jsonl: .*manifest checksum mismatch/;
    // A block-level file of the incremental with one byte changed.
    const incrFile = join(serverDir, id.incremental!, plainFile(join(serverDir, id.incremental!), '', 1, true));
    const bytes = readFileSync(incrFile);
    bytes[bytes.length >> 1] ^= 0xff;
    writeFileSync(incrFile, bytes);
    expected.incremental = /^FAILED \(base\/.*: checksum mismatch/;

    const r = await src.setup.bart(['VERIFY-CHKSUM', '-s', src.server]);
    assert.doesNotMatch(r.stderr + r.stdout, STACK, 'no stack trace');
    assert.equal(r.code, 1, `exit code 1 (some backups failed)\n${r.stdout}\n${r.stderr}`);
    const rows = verifyRows(r.stdout);
    assert.equal(rows.get(id.good!), 'OK', `the good backup is still checked and OK:\n${r.stdout}`);
    for (const [kind, pattern] of Object.entries(expected)) {
      assert.match(rows.get(id[kind]!) ?? '(not listed)', pattern, `${kind} backup ${id[kind]}:\n${r.stdout}`);
    }
    assert.equal(rows.size, Object.keys(id).length, 'every backup was verified');
  });

  test('damaged backupinfos are listed as damaged with the reason; RESTORE refuses, DELETE -i deletes', async () => {
    const copyOf = (from: string, to: string, edit: (text: string) => string) => {
      cpSync(join(serverDir, from), join(serverDir, to), { recursive: true });
      const path = join(serverDir, to, 'backupinfo');
      writeFileSync(path, edit(readFileSync(path, 'utf8')));
      chownToTestUser(join(serverDir, to));
    };
    const base = BigInt(id.good!);
    const bad: Record<string, string> = {
      copied: String(base + 1n),
      nonNumeric: String(base + 2n),
      bogus: String(base + 3n),
      nan: String(base + 4n),
    };
    // A copied directory keeps the original's identifier; a non-numeric identifier; an unknown status; a NaN size.
    copyOf(id.good!, bad.copied!, (t) => t);
    copyOf(id.good!, bad.nonNumeric!, (t) => t.replace(`BACKUP IDENTIFIER: ${id.good}`, 'BACKUP IDENTIFIER: abc'));
    const renamed = (t: string, to: string) => t.replace(`BACKUP IDENTIFIER: ${id.good}`, `BACKUP IDENTIFIER: ${to}`);
    copyOf(id.good!, bad.bogus!, (t) => renamed(t, bad.bogus!).replace(/^BACKUP STATUS: .*$/m, 'BACKUP STATUS: bogus'));
    copyOf(id.good!, bad.nan!, (t) =>
      renamed(t, bad.nan!).replace(/^BACKUP SIZE BYTES: .*$/m, 'BACKUP SIZE BYTES: NaN'),
    );
    // The incremental's parent (id.good) damaged through a missing field: the incremental is a broken chain.
    const goodInfo = join(serverDir, id.good!, 'backupinfo');
    const goodText = readFileSync(goodInfo, 'utf8');
    writeFileSync(goodInfo, goodText.replace(/^START LSN: .*\n/m, ''));

    const text = await src.setup.bart(['SHOW-BACKUPS', '-s', src.server]);
    assert.equal(text.code, 0, text.stderr);
    assert.doesNotMatch(text.stderr, STACK);
    for (const d of [...Object.values(bad), id.good!]) {
      assert.match(text.stdout, new RegExp(`${d} .*damaged\\s*$`, 'm'), `${d} listed as damaged`);
    }
    assert.match(text.stdout, new RegExp(`${id.tar} .*active\\s*$`, 'm'), 'the others are listed as before');
    const copied =
      `backup ${bad.copied} is damaged \\(` +
      `BACKUP IDENTIFIER is ${id.good} but the directory is ${bad.copied} \\(a copied`;
    assert.match(text.stderr, new RegExp(copied));
    const chained = `backup ${id.incremental} needs its parent ${id.good}, which is damaged \\(broken chain\\)`;
    assert.match(text.stderr, new RegExp(chained));

    const json = await src.setup.bart(['SHOW-BACKUPS', '-s', src.server, '--output', 'json']);
    assert.equal(json.code, 0, json.stderr);
    type Shown = { id: string; status: string; damage: string | null; sizeBytes: number | null };
    const listed = new Map((JSON.parse(json.stdout) as Shown[]).map((b) => [b.id, b]));
    assert.equal(listed.size, Object.keys(id).length + Object.keys(bad).length, 'each directory listed once');
    assert.match(listed.get(bad.nonNumeric!)!.damage!, /BACKUP IDENTIFIER is "abc", not a backup identifier/);
    assert.match(listed.get(bad.bogus!)!.damage!, /BACKUP STATUS is "bogus", not one of active, obsolete, keep/);
    assert.match(listed.get(bad.nan!)!.damage!, /BACKUP SIZE BYTES is "NaN"/);
    assert.match(listed.get(id.good!)!.damage!, /missing "START LSN"/);
    assert.equal(listed.get(bad.nan!)!.sizeBytes, null);
    assert.equal(listed.get(id.tar!)!.status, 'active');
    assert.equal(listed.get(id.tar!)!.damage, null);

    const verify = await src.setup.bart(['VERIFY-CHKSUM', '-s', src.server, '-i', bad.bogus!]);
    assert.equal(verify.code, 1);
    assert.match(verify.stdout, /FAILED \(backupinfo: BACKUP STATUS is "bogus"/);

    const target = freshPath(src, 'refused');
    const restore = await src.restore(['-i', bad.nan!, '-p', target]);
    assert.equal(restore.code, 1, restore.stderr);
    assert.doesNotMatch(restore.stderr, STACK);
    const refusal = `ERROR: +backup ${bad.nan} of server ${src.server} is damaged \\(BACKUP SIZE BYTES is "NaN"`;
    assert.match(restore.stderr, new RegExp(refusal));
    assert.ok(!existsSync(target), 'nothing restored');
    const chain = await src.restore(['-i', id.incremental!, '-p', freshPath(src, 'chain')]);
    assert.equal(chain.code, 1);
    assert.match(chain.stderr, /ERROR: +.*which is damaged \(broken chain\)/);

    const manage = await src.setup.bart(['MANAGE', '-s', src.server, '-l', '--output', 'json']);
    assert.equal(manage.code, 0, manage.stderr);
    const wal = (JSON.parse(manage.stdout) as { wal: { skipped: boolean } }[])[0]!.wal;
    assert.equal(wal.skipped, true, 'no archived WAL may go while a backupinfo is damaged');
    const keep = await src.setup.bart(['MANAGE', '-s', src.server, '-c', 'keep', '-i', id.tar!]);
    assert.equal(keep.code, 0, keep.stderr);

    const dry = await src.setup.bart(['DELETE', '-s', src.server, '-i', bad.copied!, '-n']);
    assert.equal(dry.code, 0, dry.stderr);
    const offered = [...dry.stdout.matchAll(/would delete (?:incremental )?backup (\d+)/g)].map((m) => m[1]);
    assert.deepEqual(offered, [bad.copied], 'only the copied directory is offered');
    for (const d of [bad.copied!, bad.nonNumeric!]) {
      const del = await src.setup.bart(['DELETE', '-s', src.server, '-i', d]);
      assert.equal(del.code, 0, del.stderr);
      assert.ok(!existsSync(join(serverDir, d)), `${d} deleted`);
    }
    assert.ok(existsSync(join(serverDir, id.good!)), 'the original of the copy is still there');
    writeFileSync(goodInfo, goodText);
    const again = await src.setup.bart(['SHOW-BACKUPS', '-s', src.server, '-i', id.good!, '--output', 'json']);
    const status = (JSON.parse(again.stdout) as { status: string }[])[0]!.status;
    assert.equal(status, 'active', 'a repaired backupinfo is read again');
  });

  test('process-level guard: an error nobody caught is one ERROR line, exit code 2, stack in the logfile', async () => {
    const dir = makeTempDir('guard');
    try {
      const logfile = join(dir, 'bart.log');
      const bootstrap = join(REPO_ROOT, 'dist', 'src', 'cli', 'bootstrap.js');
      const log = join(REPO_ROOT, 'dist', 'src', 'util', 'log.js');
      for (const [kind, fault] of [
        ['uncaught exception', 'setTimeout(() => { throw new Error("boom\\nsecond line"); }, 10);'],
        ['unhandled promise rejection', 'Promise.reject(new Error("boom\\nsecond line"));'],
      ] as const) {
        const script = `const { installCrashGuard } = await import(${JSON.stringify(bootstrap)});
          const { configureLog } = await import(${JSON.stringify(log)});
          configureLog({ logfile: ${JSON.stringify(logfile)} });
          installCrashGuard('bart');
          ${fault}
          setTimeout(() => process.stdout.write('still running\\n'), 2000);`;
        const env = { ...process.env, BART_DEBUG_STACK: '' };
        const r = await run(process.execPath, ['--input-type=module', '-e', script], { asTestUser: false, env });
        assert.equal(r.code, 2, `${kind}: ${r.stderr}`);
        assert.equal(r.stderr, `ERROR:  boom second line (internal error: ${kind})\n`, kind);
        assert.equal(r.stdout, '', 'the process ends at once');
        const logged = readFileSync(logfile, 'utf8');
        const stack = new RegExp(`ERROR: bart: ${kind}: Error: boom\\nsecond line\\n\\s+at `);
        assert.match(logged, stack, 'the stack is in the logfile');
        unlinkSync(logfile);
      }
    } finally {
      removeTree(dir);
    }
    // No leftover listing of the catalog by this test.
    assert.ok(readdirSync(serverDir).length > 0);
  });
});
