import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createBackupFixture, backupIdFrom, type BackupFixture } from './harness/backup-fixture.js';
import { REPO_ROOT, serverBinDir, versionsUnderTest } from './harness/pg-binaries.js';
import { makeTempDir, removeTree } from './harness/os.js';
import { evaluateRetention, type RetentionBackup } from '../src/retention/retention.js';
import { createFileHash } from '../src/util/file-hash.js';

/**
 * Replaces a stored file of a plain, uncompressed backup by `source` and redoes its manifest entry's
 * checksum and the manifest's end line (count and SHA-256 of every line before it), so that
 * VERIFY-CHKSUM still finds the backup intact: only starting and checking it can tell.
 */
function replaceStoredFile(backupDir: string, relPath: string, source: string): void {
  const stored = join(backupDir, 'base', relPath);
  assert.equal(statSync(source).size, statSync(stored).size, 'the replacement must have the same size');
  copyFileSync(source, stored);
  // The default file checksum (CRC32C: the CRC-32C and XXH64 of the content).
  const sum = createFileHash('crc32c').update(readFileSync(stored)).digest('hex');
  const manifest = join(backupDir, 'manifest.jsonl');
  const lines = readFileSync(manifest, 'utf8')
    .split('\n')
    .filter((l) => l !== '');
  let changed = 0;
  const body = lines.slice(0, -1).map((line) => {
    const obj = JSON.parse(line) as { f?: { path: string; archive: string; checksum?: string } };
    if (obj.f && obj.f.archive === 'base' && obj.f.path === relPath) {
      changed++;
      obj.f.checksum = sum;
      return JSON.stringify(obj);
    }
    return line;
  });
  assert.equal(changed, 1, `${relPath} must be in the manifest once`);
  const end = JSON.parse(lines[lines.length - 1]!) as { end: { entries: number; sha256: string } };
  end.end.sha256 = createHash('sha256')
    .update(body.map((l) => l + '\n').join(''))
    .digest('hex');
  writeFileSync(manifest, [...body, JSON.stringify(end)].map((l) => l + '\n').join(''));
}

test('retention_requires_verified_restore: the policy keeps the backups that passed VERIFY-RESTORE it needs', () => {
  const day = 86_400_000;
  const now = new Date(Date.UTC(2026, 11, 1));
  // Full backups 1 (oldest) .. 4 (newest); only 1 and 3 passed VERIFY-RESTORE.
  const backups: RetentionBackup[] = [1, 2, 3, 4].map((n) => ({
    id: String(n),
    status: 'active',
    startTime: new Date(now.getTime() - (10 - n) * day),
    verifiedRestore: n === 1 || n === 3,
  }));
  const obsolete = (policy: Parameters<typeof evaluateRetention>[1], require: boolean) =>
    evaluateRetention(backups, policy, now, require)
      .map((c) => c.id)
      .sort();
  assert.deepEqual(obsolete({ kind: 'backups', count: 1 }, false), ['1', '2', '3']);
  // The newest verified backup (3) stays, and everything newer; 1 passed too but is not needed.
  assert.deepEqual(obsolete({ kind: 'backups', count: 1 }, true), ['1', '2']);
  // Two verified backups wanted: 1 and 3 both stay, so nothing is obsolete.
  assert.deepEqual(obsolete({ kind: 'backups', count: 2 }, true), []);
  // Window of 2 days: every backup is older; the newest verified one (3) stays.
  assert.deepEqual(obsolete({ kind: 'window', count: 2, unit: 'DAYS' }, false), ['1', '2', '3', '4']);
  assert.deepEqual(obsolete({ kind: 'window', count: 2, unit: 'DAYS' }, true), ['1', '2']);
  // No verified backup at all: nothing becomes obsolete.
  const none = backups.map((b) => ({ ...b, verifiedRestore: false }));
  assert.deepEqual(evaluateRetention(none, { kind: 'backups', count: 1 }, now, true), []);
});

for (const version of versionsUnderTest()) {
  describe(`VERIFY-RESTORE on PostgreSQL ${version}`, () => {
    let fx: BackupFixture;
    /** TMPDIR of bart: where the scratch directories go, empty again after every run. */
    let scratchTmp: string;
    let goodId: string;
    let badId: string;
    const env = () => ({ TMPDIR: scratchTmp });

    before(async () => {
      fx = await createBackupFixture({ version, serverExtra: { postgres_bin_path: serverBinDir(version) } });
      scratchTmp = makeTempDir('vr-tmp');
      // Two tables of the same size with different rows, each with a primary key; a second database.
      for (const [table, offset] of [
        ['a', 0],
        ['b', 1_000_000],
      ] as const) {
        await fx.cluster.query(
          `CREATE TABLE ${table} (id bigint PRIMARY KEY, v text NOT NULL);
           INSERT INTO ${table} SELECT g + ${offset}, md5((g + ${offset})::text) FROM generate_series(1, 5000) g`,
        );
      }
      await fx.cluster.query('CREATE DATABASE db2');
      await fx.cluster.query('CREATE TABLE t2 AS SELECT g AS id FROM generate_series(1, 1000) g', [], 'db2');
      // Frozen and checkpointed: the files on disk are final, replay during recovery does not rewrite them.
      for (const sql of ['VACUUM FREEZE a', 'VACUUM FREEZE b', 'CHECKPOINT']) await fx.cluster.query(sql);
    });

    after(async () => {
      await fx?.destroy();
      if (scratchTmp) removeTree(scratchTmp);
    });

    test('a good backup passes (exit 0, verdict line, scratch removed), also with --output json', async () => {
      const backup = await fx.setup.bart(['BACKUP', '-s', fx.server, '-F', 't', '-z']);
      assert.equal(backup.code, 0, backup.stderr);
      goodId = backupIdFrom(backup.stdout);

      const r = await fx.setup.bart(['VERIFY-RESTORE', '-s', fx.server, '-w', '2'], env());
      assert.equal(r.code, 0, r.stdout + r.stderr);
      const verdict = `^backup ${goodId}: VERIFY-RESTORE OK in \\d+\\.\\d s \\(amcheck: 3 databases`;
      assert.match(r.stdout, new RegExp(verdict, 'm'));
      // RESTORE's own "start the restored server with" advice is not for this command.
      assert.doesNotMatch(r.stdout, /start the restored server/);
      // pgbart's own verifier: on every version, no pg_checksums needed (the embedded PostgreSQL 17 has none).
      assert.match(r.stdout, /checksums: [\d,]+ files, [\d,]+ pages\)/);
      assert.deepEqual(readdirSync(scratchTmp), [], 'the scratch directory is removed');

      const j = await fx.setup.bart(['VERIFY-RESTORE', '-s', fx.server, '-i', goodId, '--output', 'json'], env());
      assert.equal(j.code, 0, j.stdout + j.stderr);
      const report = JSON.parse(j.stdout) as Record<string, unknown>[];
      assert.equal(report.length, 1);
      const one = report[0]!;
      assert.equal(one.id, goodId);
      assert.equal(one.result, 'OK');
      assert.equal(one.reason, null);
      assert.equal(one.dataChecksums, true);
      assert.deepEqual(one.databaseCheck, { ok: true, summary: 'amcheck: 3 databases' });
      type Sums = { checked: boolean; ok: boolean; files: number; pages: number; failedPages: number };
      const sums = one.pageChecksums as Sums;
      assert.equal(sums.checked, true);
      assert.equal(sums.ok, true);
      assert.ok(sums.files > 100 && sums.pages > sums.files, JSON.stringify(sums));
      assert.equal(sums.failedPages, 0);
      assert.deepEqual(readdirSync(scratchTmp), []);
    });

    test('a table file swapped for another valid one: VERIFY-CHKSUM passes, VERIFY-RESTORE fails', async () => {
      const backup = await fx.setup.bart(['BACKUP', '-s', fx.server, '-F', 'p', '--backup-name', 'swapped']);
      assert.equal(backup.code, 0, backup.stderr);
      badId = backupIdFrom(backup.stdout);
      const [pa, pb] = await Promise.all(
        ['a', 'b'].map(async (t) => String(await fx.cluster.scalar(`SELECT pg_relation_filepath('${t}')`))),
      );
      replaceStoredFile(fx.backupDir(badId), pa!, join(fx.backupDir(badId), 'base', pb!));

      const chk = await fx.setup.bart(['VERIFY-CHKSUM', '-s', fx.server, '-i', badId]);
      assert.equal(chk.code, 0, 'VERIFY-CHKSUM cannot tell: ' + chk.stdout + chk.stderr);

      const r = await fx.setup.bart(['VERIFY-RESTORE', '-s', fx.server, '-i', 'swapped'], env());
      assert.equal(r.code, 1, r.stdout + r.stderr);
      const verdict = `^backup ${badId} \\(swapped\\): VERIFY-RESTORE FAILED \\(amcheck found problems: .+\\)`;
      assert.match(r.stdout, new RegExp(verdict, 'm'));
      assert.match(r.stdout, /a_pkey.*lacks matching index tuple/);
      assert.deepEqual(readdirSync(scratchTmp), [], 'the scratch directory is removed after a failure too');
    });

    test('SHOW-BACKUPS shows the last VERIFY-CHKSUM and VERIFY-RESTORE (-t and JSON)', async () => {
      const t = await fx.setup.bart(['SHOW-BACKUPS', '-s', fx.server, '-t']);
      assert.equal(t.code, 0, t.stderr);
      const blocks = t.stdout.split('\n\n');
      const good = blocks.find((b) => b.includes(goodId))!;
      const bad = blocks.find((b) => b.includes(badId))!;
      assert.match(good, /LAST VERIFY-CHKSUM\s+: never/);
      assert.match(good, /LAST VERIFY-RESTORE\s+: OK at \d{4}-\d\d-\d\d .+\(amcheck: 3 databases/);
      assert.match(bad, /LAST VERIFY-CHKSUM\s+: OK at \d{4}-\d\d-\d\d .+\(\d+ files\)/);
      assert.match(bad, /LAST VERIFY-RESTORE\s+: FAILED at \d{4}-\d\d-\d\d .+: amcheck found problems/);

      const j = await fx.setup.bart(['SHOW-BACKUPS', '-s', fx.server, '--output', 'json']);
      assert.equal(j.code, 0, j.stderr);
      const rows = JSON.parse(j.stdout) as Record<string, Record<string, unknown> | null | string>[];
      const g = rows.find((x) => x.id === goodId)!;
      const b = rows.find((x) => x.id === badId)!;
      assert.equal(g.lastVerifyChksum, null);
      assert.equal((g.lastVerifyRestore as Record<string, unknown>).result, 'OK');
      assert.equal((b.lastVerifyChksum as Record<string, unknown>).result, 'OK');
      const failed = b.lastVerifyRestore as Record<string, unknown>;
      assert.equal(failed.result, 'FAILED');
      assert.match(String(failed.reason), /^amcheck found problems/);
      assert.ok(!Number.isNaN(Date.parse(String(failed.time))));
    });

    test('MANAGE with retention_requires_verified_restore keeps the newest backup that passed', async () => {
      const original = readFileSync(fx.setup.configPath, 'utf8');
      try {
        // goodId passed VERIFY-RESTORE; the newer badId failed it. 1 BACKUPS would make goodId obsolete.
        const section = `[${fx.server}]\nretention_policy = 1 BACKUPS\n`;
        fx.setup.writeConfig(original.replace(`[${fx.server}]\n`, section));
        const plain = await fx.setup.bart(['MANAGE', '-s', fx.server, '-n']);
        assert.equal(plain.code, 0, plain.stderr);
        assert.match(plain.stdout, new RegExp(`would mark backup ${goodId}\\b.* as obsolete`));
        const required = `${section}retention_requires_verified_restore = enabled\n`;
        fx.setup.writeConfig(original.replace(`[${fx.server}]\n`, required));
        const kept = await fx.setup.bart(['MANAGE', '-s', fx.server, '-n']);
        assert.equal(kept.code, 0, kept.stderr);
        assert.match(kept.stdout, /no backup becomes obsolete/);
      } finally {
        fx.setup.writeConfig(original);
      }
    });

    test('Ctrl-C while the scratch server runs: it is stopped, the scratch directory removed (exit 130)', async () => {
      const child = spawn(
        process.execPath,
        [join(REPO_ROOT, 'bin', 'bart.js'), '-c', fx.setup.configPath, 'VERIFY-RESTORE', '-s', fx.server, '-i', goodId],
        { env: { ...process.env, ...env() }, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const closed = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
      // Wait for the scratch server's postmaster.pid, then interrupt bart as a terminal's Ctrl-C would.
      let pidFile: string | undefined;
      for (let i = 0; i < 600 && !pidFile; i++) {
        await new Promise((r) => setTimeout(r, 100));
        for (const d of readdirSync(scratchTmp)) {
          const candidate = join(scratchTmp, d, 'data', 'postmaster.pid');
          if (existsSync(candidate)) pidFile = candidate;
        }
      }
      assert.ok(pidFile, 'the scratch server started');
      const postmaster = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
      child.kill('SIGINT');
      const code = await closed;
      assert.equal(code, 130, stderr);
      const interrupted = /^ERROR:\s+VERIFY-RESTORE was interrupted; the scratch cluster was stopped and .+ removed\n$/;
      assert.match(stderr, interrupted);
      assert.deepEqual(readdirSync(scratchTmp), []);
      // Gone, or a zombie whose parent (init, in some containers) does not reap it: ended either way.
      const state = existsSync(`/proc/${postmaster}/stat`) ? readFileSync(`/proc/${postmaster}/stat`, 'utf8') : '';
      assert.ok(state === '' || /^\d+ \(.*\) Z/.test(state), `the scratch postmaster is gone: ${state}`);
    });

    test('missing or wrong server binaries: one clear error naming bart.cfg and its line', async () => {
      const original = readFileSync(fx.setup.configPath, 'utf8');
      const empty = makeTempDir('no-bin');
      try {
        const withBin = (dir: string) => original.replace(/^postgres_bin_path = .*$/m, `postgres_bin_path = ${dir}`);
        fx.setup.writeConfig(withBin(empty));
        const r = await fx.setup.bart(['VERIFY-RESTORE', '-s', fx.server, '-i', goodId], env());
        assert.equal(r.code, 1);
        assert.match(r.stderr, /^ERROR: .*bart\.cfg:\d+\): no executable pg_ctl at .*no-bin.*\/pg_ctl\n$/);
        assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');

        const other = version === 15 ? 17 : 15;
        fx.setup.writeConfig(withBin(serverBinDir(other)));
        const w = await fx.setup.bart(['VERIFY-RESTORE', '-s', fx.server, '-i', goodId], env());
        assert.equal(w.code, 1);
        assert.match(w.stderr, new RegExp(`is PostgreSQL ${other}, but the backup is of PostgreSQL ${version}`));

        fx.setup.writeConfig(withBin('relative/bin'));
        const rel = await fx.setup.bart(['SHOW-BACKUPS', '-s', fx.server]);
        assert.equal(rel.code, 1);
        assert.match(rel.stderr, /bart\.cfg:\d+: postgres_bin_path = "relative\/bin" must be an absolute path/);

        // PostgreSQL refuses root: a BART user root gets a clear error, not a failed backup.
        fx.setup.writeConfig(original.replace(/^bart_host = .*$/m, 'bart_host = root@127.0.0.1'));
        const root = await fx.setup.bart(['VERIFY-RESTORE', '-s', fx.server, '-i', goodId], env());
        assert.equal(root.code, 1);
        assert.match(root.stderr, /^ERROR:\s+PostgreSQL refuses to run as root.*bart_host in .* names root/);
        assert.deepEqual(readdirSync(scratchTmp), []);
      } finally {
        fx.setup.writeConfig(original);
        removeTree(empty);
      }
    });
  });
}
