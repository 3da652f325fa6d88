import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  chmodSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createBartSetup, serverSection } from './harness/bart.js';
import { freePort, TestCluster } from './harness/cluster.js';
import { versionsUnderTest } from './harness/pg-binaries.js';

const SECRET = 'S3cret-pw-Never-Logged';

test('CHECK-CONFIG without -s checks the [BART] section and names a broken pg_basebackup_path', async () => {
  const setup = createBartSetup();
  try {
    const ok = await setup.bart(['CHECK-CONFIG']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(
      ok.stdout,
      /backup_path ".*" is writable: success \(it does not exist yet; "bart INIT" will create it/,
    );
    assert.match(
      ok.stdout,
      /pg_basebackup_path ".*pg_basebackup" is executable: success \(returns version "pg_basebackup \(PostgreSQL\) 15\./,
    );
    assert.match(ok.stdout, /logfile ".*bart\.log" is writable: success/);

    setup.writeConfig(
      readFileSync(setup.configPath, 'utf8').replace(
        /^pg_basebackup_path = .*$/m,
        'pg_basebackup_path = /nonexistent/pg_basebackup',
      ),
    );
    const bad = await setup.bart(['CHECK-CONFIG']);
    assert.notEqual(bad.code, 0);
    assert.match(
      bad.stderr,
      /ERROR:\s+pg_basebackup_path "\/nonexistent\/pg_basebackup" is executable: does not exist: set pg_basebackup_path/,
    );
  } finally {
    setup.cleanup();
  }
});

test('CHECK-CONFIG of a remote server on a host without ssh says to install the OpenSSH client', async () => {
  // PATH holds every program of this host except the OpenSSH client, as on a host where it is not installed.
  const bin = mkdtempSync(join(tmpdir(), 'pgbart-nossh-'));
  chmodSync(bin, 0o755);
  const setup = createBartSetup();
  try {
    for (const dir of ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin']) {
      for (const name of existsSync(dir) ? readdirSync(dir) : []) {
        if (/^(ssh|scp|sftp|slogin)$/.test(name) || existsSync(join(bin, name))) continue;
        symlinkSync(join(dir, name), join(bin, name));
      }
    }
    const port = await freePort();
    setup.writeConfig(
      `${readFileSync(setup.configPath, 'utf8')}\n[db1]\nhost = 127.0.0.1\nport = ${port}\nuser = postgres\ncluster_owner = postgres\nremote_host = postgres@127.0.0.1\n`,
    );
    const r = await setup.bart(['CHECK-CONFIG', '-s', 'db1'], { PATH: bin });
    assert.equal(r.code, 1, `${r.stdout}\n${r.stderr}`);
    assert.match(
      r.stderr,
      /ERROR:\s+cluster_owner and ssh\/scp connectivity to postgres@127\.0\.0\.1: passwordless ssh as "[^"]+" failed: ssh is not installed on this host \(or not in PATH of "[^"]+"\): install the OpenSSH client \(Debian: apt-get install openssh-client\)/,
      r.stderr,
    );
  } finally {
    setup.cleanup();
    rmSync(bin, { recursive: true, force: true });
  }
});

for (const version of versionsUnderTest()) {
  test(`CHECK-CONFIG on PostgreSQL ${version}: each failure says why (archive_mode off, wrong port, not superuser, failing archive_command, server down); passwords stay out of logs`, async () => {
    const cluster = await TestCluster.create({ version });
    const setup = createBartSetup();
    try {
      const unusedPort = await freePort();
      await cluster.query('CREATE ROLE plain LOGIN');
      await cluster.query(`CREATE ROLE pwuser LOGIN SUPERUSER REPLICATION PASSWORD '${SECRET}'`);
      // Password authentication for pwuser only (the harness trusts everybody else); first match wins.
      const hba = join(cluster.dataDir, 'pg_hba.conf');
      await cluster.query('CREATE ROLE nohba LOGIN SUPERUSER REPLICATION');
      writeFileSync(
        hba,
        'host all pwuser 127.0.0.1/32 scram-sha-256\nhost replication pwuser 127.0.0.1/32 scram-sha-256\n' +
          `host replication nohba 127.0.0.1/32 reject\n${readFileSync(hba, 'utf8')}`,
      );
      await cluster.reload();
      setup.writeConfig(
        `${readFileSync(setup.configPath, 'utf8')}\n${serverSection(cluster, 'db')}\n` +
          `${serverSection(cluster, 'wrongport', { port: String(unusedPort) })}\n` +
          `${serverSection(cluster, 'plain', { user: 'plain' })}\n${serverSection(cluster, 'pw', { user: 'pwuser' })}\n` +
          `${serverSection(cluster, 'nohba', { user: 'nohba' })}`,
      );
      await setup.bart(['INIT', '-s', 'all', '--no-configure']);

      // archive_mode off (a fresh cluster): the fix is bart INIT.
      const off = await setup.bart(['CHECK-CONFIG', '-s', 'db']);
      assert.notEqual(off.code, 0);
      assert.match(off.stderr, /ERROR:\s+archive_mode is on: archive_mode is off: run "bart INIT -s db"/);
      assert.match(off.stderr, /ERROR:\s+archive_command is set: archive_command is empty: run "bart INIT -s db"/);
      // The checks that do not depend on archiving still ran and passed.
      assert.match(off.stdout, /replication connection as user "postgres": success/);
      assert.match(off.stdout, /user "postgres" is a database superuser: success/);

      // Wrong port: nothing listens there.
      const wrong = await setup.bart(['CHECK-CONFIG', '-s', 'wrongport']);
      assert.notEqual(wrong.code, 0);
      assert.match(
        wrong.stderr,
        new RegExp(
          `ERROR:\\s+connection to 127\\.0\\.0\\.1:${unusedPort} as user "postgres": no PostgreSQL server is listening on 127\\.0\\.0\\.1:${unusedPort} \\(connection refused\\): start the server, or fix host/port in \\[wrongport\\]`,
        ),
      );

      // Not a superuser (and no REPLICATION attribute either).
      const plain = await setup.bart(['CHECK-CONFIG', '-s', 'plain']);
      assert.notEqual(plain.code, 0);
      assert.match(
        plain.stderr,
        /ERROR:\s+user "plain" is a database superuser: "plain" is not a superuser: run "ALTER ROLE plain SUPERUSER"/,
      );
      assert.match(plain.stdout, /connection to .* as user "plain": success/);
      assert.match(
        plain.stderr,
        /ERROR:\s+replication connection as user "plain": .*run "ALTER ROLE plain REPLICATION"/,
      );

      // pg_hba.conf refuses replication connections for this user: the fix names the pg_hba line.
      const noHba = await setup.bart(['CHECK-CONFIG', '-s', 'nohba']);
      assert.notEqual(noHba.code, 0);
      assert.match(
        noHba.stderr,
        /ERROR:\s+replication connection as user "nohba": pg_hba\.conf does not let "nohba" open replication connections .*add "host replication nohba <bart host address>\/32 scram-sha-256"/,
      );
      assert.match(noHba.stdout, /user "nohba" is a database superuser: success/);

      // Passwords: a wrong one fails with a fix, a right one works; neither shows up anywhere.
      const badPw = await setup.bart(['-d', 'CHECK-CONFIG', '-s', 'pw'], { PGPASSWORD: `${SECRET}-wrong` });
      assert.notEqual(badPw.code, 0);
      assert.match(badPw.stderr, /authentication as "pwuser" failed: put the password in ~\/\.pgpass/);
      const goodPw = await setup.bart(['-d', 'CHECK-CONFIG', '-s', 'pw'], { PGPASSWORD: SECRET });
      assert.match(goodPw.stdout, /connection to .* as user "pwuser": success/);
      assert.match(goodPw.stdout, /replication connection as user "pwuser": success/);
      for (const r of [badPw, goodPw]) {
        assert.ok(!r.stdout.includes(SECRET) && !r.stderr.includes(SECRET), 'password on the console');
      }
      assert.ok(!readFileSync(setup.logfile, 'utf8').includes(SECRET), 'password in the logfile');

      // An archive_command that fails: archiving is configured and active, but nothing arrives.
      const init = await setup.bart(['INIT', '-s', 'db']);
      assert.equal(init.code, 0, init.stderr);
      await cluster.restart();
      await cluster.query("ALTER SYSTEM SET archive_command = 'false'");
      await cluster.reload();
      // The message names the archiver's failures (pg_stat_archiver), not a 30-second timeout; how fast
      // that is reported is for benchmarks, not for an assertion on a shared machine's clock.
      const failing = await setup.bart(['CHECK-CONFIG', '-s', 'db']);
      assert.notEqual(failing.code, 0);
      assert.match(
        failing.stderr,
        /ERROR:\s+archive_command is set: archive_command 'false' does not store WAL in ".*archived_wals"/,
      );
      assert.match(
        failing.stderr,
        /ERROR:\s+WAL archiving is working: archive_command failed \d+ times? while archiving; [0-9A-F]{24} did not reach ".*" \(pg_stat_archiver: failed_count \d+, last_failed_wal [0-9A-F]{24}/,
      );

      // Back to pgbart's command: everything passes again (the archiver retries after the reload).
      const fixed = await setup.bart(['INIT', '-s', 'db', '-o']);
      assert.equal(fixed.code, 0, fixed.stderr);
      const good = await setup.bart(['CHECK-CONFIG', '-s', 'db']);
      assert.equal(good.code, 0, `${good.stdout}\n${good.stderr}`);

      // Server down.
      await cluster.stop();
      const down = await setup.bart(['CHECK-CONFIG', '-s', 'db']);
      assert.notEqual(down.code, 0);
      assert.match(
        down.stderr,
        new RegExp(
          `ERROR:\\s+connection to 127\\.0\\.0\\.1:${cluster.port} as user "postgres": no PostgreSQL server is listening on 127\\.0\\.0\\.1:${cluster.port}.*start the server`,
        ),
      );
      assert.match(down.stderr, /WARNING:\s+WAL archiving is working: not checked: no connection to the server/);
    } finally {
      await cluster.destroy();
      setup.cleanup();
    }
  });
}
