/**
 * Untrusted input, the smaller findings: parallel ARCHIVE-PUSH of one segment, line breaks in
 * recovery settings, `-r`/remote_host values that ssh would read as options, and the archive path
 * in BART's scp archive_command.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createBartSetup } from './harness/bart.js';
import { makeTempDir, removeTree, run, testUserIds } from './harness/os.js';
import { versionsUnderTest } from './harness/pg-binaries.js';
import { createRestoreSource, freshPath, type RestoreSource } from './harness/restore.js';
import { expectedArchiveCommand } from '../src/commands/archive-command.js';
import { parseConfig } from '../src/config/parse-config.js';
import { recoverySettings } from '../src/postgres/recovery-config.js';

const SEGMENT_SIZE = 16 * 1024 * 1024;

/** The first line of stderr, which must be the whole error (no stack trace, no second line). */
function errorLine(stderr: string): string {
  const lines = stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one error line expected, got:\n${stderr}`);
  return lines[0]!;
}

test('ARCHIVE-PUSH: 8 parallel pushes of one segment all succeed, leave one archived file, no temp files', async () => {
  const setup = createBartSetup({}, '[ARCH]\nhost = 127.0.0.1\nport = 1\nuser = postgres\ncluster_owner = postgres\n');
  try {
    const init = await setup.bart(['INIT', '-s', 'arch', '--no-configure']);
    assert.equal(init.code, 0, init.stderr);
    const archiveDir = join(setup.backupPath, 'arch', 'archived_wals');
    const work = join(setup.dir, 'work');
    mkdirSync(work);
    const name = '000000010000000000000021';
    const src = join(work, name);
    writeFileSync(src, randomBytes(SEGMENT_SIZE));
    const ids = testUserIds();
    if (ids) for (const p of [work, src]) chownSync(p, ids.uid, ids.gid);

    // Several rounds: whether pushes overlap (copy running when another links) depends on timing.
    for (let round = 0; round < 3; round++) {
      for (const f of readdirSync(archiveDir)) removeTree(join(archiveDir, f));
      const pushes = Array.from({ length: 8 }, () => setup.bart(['ARCHIVE-PUSH', '-s', 'arch', src]));
      const results = await Promise.all(pushes);
      for (const r of results) assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(readdirSync(archiveDir), [name], `round ${round}: exactly the archived segment, no temp files`);
      assert.ok(readFileSync(join(archiveDir, name)).equals(readFileSync(src)));
    }
  } finally {
    setup.cleanup();
  }
});

test('recovery settings: a line break or NUL in any value is refused, naming the setting', () => {
  const base = { major: 16, restoreCommand: 'cp /x/%f %p', inclusive: false, standby: false } as const;
  for (const bad of ['a\nb', 'a\rb', 'a\0b']) {
    assert.throws(
      () => recoverySettings({ ...base, target: { kind: 'name', value: bad } }),
      /recovery_target_name .* contains a line break or NUL/,
    );
    assert.throws(
      () => recoverySettings({ ...base, restoreCommand: `cp '/r${bad}/%f' %p`, target: { kind: 'none' } }),
      /restore_command .* contains a line break or NUL/,
    );
  }
  const fine = recoverySettings({ ...base, target: { kind: 'name', value: "it's fine \\ here" } });
  assert.equal(fine.find(([k]) => k === 'recovery_target_name')![1], "it's fine \\ here");
});

test("archive_command: the archive path (%a) in BART's scp template is shell-quoted", async () => {
  const archivePath = "/srv/wal archive/it's 100%";
  const config = parseConfig(
    `[BART]\nbart_host = bartuser@bart.example.com\nbackup_path = /srv/bart\n\n` +
      '[db1]\nhost = 10.0.0.5\nuser = postgres\ncluster_owner = postgres\nremote_host = postgres@10.0.0.5\n' +
      `archive_path = ${archivePath}\n`,
    '/etc/bart.cfg',
  );
  const command = expectedArchiveCommand(
    config,
    config.servers.find((s) => s.name === 'db1')!,
  );
  // What PostgreSQL does with it: %p and %f replaced, %% becomes %; then /bin/sh runs it.
  const seg = '000000010000000000000003';
  const placeholders: Record<string, string> = { p: `pg_wal/${seg}`, f: seg, '%': '%' };
  const expanded = command.replace(/%([pf%])/g, (_, c: string) => placeholders[c]!);
  const r = await run('sh', ['-c', `scp() { printf '%s\\n' "$@"; }; ${expanded}`], { asTestUser: false });
  assert.equal(r.code, 0, r.stderr);
  const argv = r.stdout.split('\n').slice(0, -1);
  assert.deepEqual(argv, [`pg_wal/${seg}`, `bartuser@bart.example.com:${archivePath}/${seg}`], command);
});

test('bart.cfg: a remote_host that ssh would take as an option is a <file>:<line> error', async () => {
  const setup = createBartSetup();
  try {
    const base = readFileSync(setup.configPath, 'utf8');
    for (const value of ['postgres@-oProxyCommand', '-oProxyCommand=touch /tmp/x']) {
      const path = join(setup.dir, 'bad.cfg');
      const text =
        `${base}\n[db1]\nhost = 127.0.0.1\nuser = postgres\ncluster_owner = postgres\n` + `remote_host = ${value}\n`;
      writeFileSync(path, text);
      chmodSync(path, 0o644);
      const line = text.split('\n').findIndex((l) => l.startsWith('remote_host')) + 1;
      const r = await setup.bart(['-c', path, 'CHECK-CONFIG']);
      assert.notEqual(r.code, 0, value);
      const escaped = path.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
      const expected = `^ERROR:\\s+${escaped}:${line}: remote_host = ".*" is invalid: .*must not start with "-"`;
      assert.match(errorLine(r.stderr), new RegExp(expected), value);
    }
  } finally {
    setup.cleanup();
  }
});

describe('RESTORE refuses untrusted option values before anything is written', () => {
  const version = versionsUnderTest()[0]!;
  let src: RestoreSource;
  let backupId: string;

  before(async () => {
    src = await createRestoreSource(version);
    backupId = await src.backup(['-F', 'p']);
    await src.archiveCurrentWal();
  });

  after(async () => {
    await src?.destroy();
  });

  test('a line break in -p (with -c, it lands in restore_command) or in --target-name', async () => {
    for (const [what, args] of [
      ['-p with a newline', (p: string) => ['-p', `${p}\nrecovery_target_action = 'promote'`, '-c']],
      ['-p with a carriage return', (p: string) => ['-p', `${p}\rx`]],
      ['--target-name with a newline', (p: string) => ['-p', p, '--target-name', "rp\nrestore_command = 'touch /x'"]],
    ] as const) {
      const path = freshPath(src, 'nl');
      const r = await src.restore(['-i', backupId, ...args(path)]);
      assert.notEqual(r.code, 0, `${what}: ${r.stdout}`);
      const says = /^ERROR:\s+(-p\/--restore-path|--target-name) ".*" contains a line break or NUL/;
      assert.match(errorLine(r.stderr), says, what);
      assert.deepEqual(
        readdirSync(src.scratch).filter((n) => n.startsWith('nl-')),
        [],
        `${what}: nothing created`,
      );
    }
  });

  test('-r values that ssh would read as options are refused at parse time', async () => {
    const marker = join(makeTempDir('marker'), 'touched');
    try {
      // The first passes a plain user@host pattern: ssh would take it as -o ProxyCommand=... .
      const values = [
        `-oProxyCommand=touch\${IFS}${marker}@localhost`,
        '-oProxyCommand=touch /tmp/x',
        'postgres@-oProxyCommand=x',
      ];
      for (const remote of values) {
        const path = freshPath(src, 'r');
        const r = await src.restore(['-i', backupId, '-p', path, '-r', remote]);
        assert.notEqual(r.code, 0, remote);
        const says = /^ERROR:\s+-r\/--remote-host ".*" is invalid: .*must not start with "-"/;
        assert.match(errorLine(r.stderr), says, remote);
        assert.ok(!existsSync(path), `${remote}: nothing created`);
      }
      assert.ok(!existsSync(marker), 'no ProxyCommand ran');
    } finally {
      removeTree(join(marker, '..'));
    }
  });
});
