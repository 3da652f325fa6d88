import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, chownSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createBartSetup, serverSection } from './harness/bart.js';
import { TestCluster } from './harness/cluster.js';
import { testUserIds } from './harness/os.js';
import { versionsUnderTest } from './harness/pg-binaries.js';
import { waitFor } from './harness/wait.js';

/** NUMBER OF ARCHIVES from SHOW-SERVERS text output. */
function archivesShown(stdout: string): number {
  const m = /^NUMBER OF ARCHIVES\s*: (\d+)$/m.exec(stdout);
  assert.ok(m, `no NUMBER OF ARCHIVES line in:\n${stdout}`);
  return Number(m[1]);
}

for (const version of versionsUnderTest()) {
  test(`INIT: the new-user story on PostgreSQL ${version} (INIT, restart, CHECK-CONFIG all success, archives grow)`, async () => {
    const cluster = await TestCluster.create({ version });
    const setup = createBartSetup();
    try {
      setup.writeConfig(
        `${readFileSync(setup.configPath, 'utf8')}\n${serverSection(cluster, 'Prod')}\n${serverSection(cluster, 'manual')}`,
      );

      // 0. A bart.cfg only root can read: bart itself works (it reads it before switching users), but
      // the archive_command would not, so INIT refuses before touching the server.
      const cfgText = readFileSync(setup.configPath, 'utf8');
      if (testUserIds()) {
        chownSync(setup.configPath, 0, 0);
        chmodSync(setup.configPath, 0o600);
        const unreadable = await setup.bart(['INIT', '-s', 'prod']);
        assert.notEqual(unreadable.code, 0);
        assert.match(
          unreadable.stderr,
          /the configuration file ".*bart\.cfg" is not readable by the BART user "postgres".*archive_command INIT would set could not run/,
        );
        assert.equal(await cluster.scalar('SHOW archive_mode'), 'off');
        assert.doesNotMatch(readFileSync(join(cluster.dataDir, 'postgresql.auto.conf'), 'utf8'), /archive/);
        setup.writeConfig(cfgText);
      }

      // 1. INIT: catalog directories, archive_mode + archive_command, and "restart needed".
      const init = await setup.bart(['INIT', '-s', 'prod']);
      assert.equal(init.code, 0, init.stderr);
      assert.match(
        init.stderr,
        /WARNING:\s+archive_mode is not active yet on server "prod": restart the PostgreSQL server/,
      );
      const archiveDir = join(setup.backupPath, 'prod', 'archived_wals');
      for (const dir of [join(setup.backupPath, 'prod'), archiveDir]) {
        const st = statSync(dir);
        assert.ok(st.isDirectory());
        assert.equal(st.mode & 0o777, 0o700, `${dir} mode`);
        const ids = testUserIds();
        if (ids) assert.equal(st.uid, ids.uid, `${dir} owned by the BART user`);
      }
      const auto = readFileSync(join(cluster.dataDir, 'postgresql.auto.conf'), 'utf8');
      assert.match(auto, /^archive_mode = 'on'$/m);
      assert.match(auto, /^archive_command = '.*bin\/bart\.js -c .*bart\.cfg ARCHIVE-PUSH -s prod %p'$/m);

      // 2. Before the restart, CHECK-CONFIG says what is missing.
      const early = await setup.bart(['CHECK-CONFIG', '-s', 'prod']);
      assert.notEqual(early.code, 0);
      assert.match(
        early.stderr,
        /archive_mode is on: archive_mode is off in the running server but set to on .*restart the PostgreSQL server/,
      );

      // 3. Restart as told: every check succeeds.
      await cluster.restart();
      const check = await setup.bart(['CHECK-CONFIG', '-s', 'prod']);
      assert.equal(check.code, 0, `${check.stdout}\n${check.stderr}`);
      assert.equal(check.stderr, '');
      const lines = check.stdout.trim().split('\n');
      assert.equal(lines[0], 'INFO:  Checking server prod');
      for (const label of [
        'connection to',
        'replication connection',
        'is a database superuser',
        'can read the data files',
        'is writable',
        'archive_mode is on',
        'archive_command is set',
        'WAL archiving is working',
      ]) {
        assert.ok(
          lines.some((l) => l.includes(label) && /: success\b/.test(l)),
          `"${label}: success" missing in:\n${check.stdout}`,
        );
      }

      // 4. SHOW-SERVERS: NUMBER OF ARCHIVES grows after pg_switch_wal().
      const before = archivesShown((await setup.bart(['SHOW-SERVERS', '-s', 'prod'])).stdout);
      assert.ok(before >= 1, 'CHECK-CONFIG archived at least one segment');
      const walfile = await cluster.switchWal();
      await waitFor(
        `${walfile} in the archive`,
        () => {
          try {
            return statSync(join(archiveDir, walfile)).isFile();
          } catch {
            return false;
          }
        },
        { timeoutMs: 30_000, intervalMs: 200 },
      );
      const after = await setup.bart(['SHOW-SERVERS', '-s', 'prod']);
      assert.equal(after.code, 0, after.stderr);
      assert.equal(archivesShown(after.stdout), before + 1);
      assert.match(after.stdout, /^ARCHIVE COMMAND\s*: .*ARCHIVE-PUSH -s prod %p$/m);
      const archived = statSync(join(archiveDir, walfile));
      assert.equal(archived.mode & 0o777, 0o600, 'archived WAL is private');
      assert.equal(archived.size, 16 * 1024 * 1024);

      // 5. INIT again changes nothing; an existing foreign archive_command is kept without -o and replaced with it.
      const again = await setup.bart(['INIT', '-s', 'prod']);
      assert.equal(again.code, 0, again.stderr);
      assert.match(again.stdout, /needs no change: no reload or restart needed/);
      await cluster.query("ALTER SYSTEM SET archive_command = 'cp %p /somewhere/else/%f'");
      await cluster.reload();
      const keep = await setup.bart(['INIT', '-s', 'prod']);
      assert.equal(keep.code, 0, keep.stderr);
      assert.match(keep.stdout, /already set \('cp %p \/somewhere\/else\/%f'\); left unchanged \(use -o\/--override/);
      assert.equal(await cluster.scalar('SHOW archive_command'), 'cp %p /somewhere/else/%f');
      const override = await setup.bart(['INIT', '-s', 'prod', '-o']);
      assert.equal(override.code, 0, override.stderr);
      assert.match(override.stdout, /configuration reloaded with pg_reload_conf\(\), no restart needed/);
      // INIT reloaded by itself: the running server already uses pgbart's command.
      assert.match(String(await cluster.scalar('SHOW archive_command')), /ARCHIVE-PUSH -s prod %p$/);

      // 6. --no-configure only creates directories (INIT -r is covered by the lifecycle tests).
      const noConf = await setup.bart(['INIT', '-s', 'manual', '--no-configure']);
      assert.equal(noConf.code, 0, noConf.stderr);
      assert.ok(statSync(join(setup.backupPath, 'manual', 'archived_wals')).isDirectory());
      assert.doesNotMatch(noConf.stdout, /archive_command/);
    } finally {
      await cluster.destroy();
      setup.cleanup();
    }
  });
}
