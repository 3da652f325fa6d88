import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chownSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createBartSetup, serverSection } from './harness/bart.js';
import { freePort, TestCluster } from './harness/cluster.js';
import { testUserIds } from './harness/os.js';
import { versionsUnderTest } from './harness/pg-binaries.js';

const FIELDS = [
  'SERVER NAME',
  'BACKUP FRIENDLY NAME',
  'HOST NAME',
  'USER NAME',
  'PORT',
  'REMOTE HOST',
  'RETENTION POLICY',
  'DISK UTILIZATION',
  'NUMBER OF ARCHIVES',
  'ARCHIVE PATH',
  'ARCHIVE COMMAND',
  'XLOG METHOD',
  'WAL COMPRESSION',
  'TABLESPACE PATH(s)',
  'INCREMENTAL BACKUP',
  'DESCRIPTION',
  'REPOSITORY',
  'ENCRYPTION',
];

function writeOwned(path: string, data: Buffer): void {
  writeFileSync(path, data);
  const ids = testUserIds();
  if (ids) chownSync(path, ids.uid, ids.gid);
}

const version = versionsUnderTest()[0]!;
test(`SHOW-SERVERS on PostgreSQL ${version}: every field in BART's order and alignment, catalog usage, live archive_command, JSON`, async () => {
  const cluster = await TestCluster.create({ version });
  const setup = createBartSetup();
  try {
    const downPort = await freePort();
    setup.writeConfig(
      `${readFileSync(setup.configPath, 'utf8')}\n` +
        `${serverSection(cluster, 'Live', { retention_policy: '8 BACKUPS', backup_name: 'live_%year-%month-%day', wal_compression: 'enabled', xlog_method: 'stream', tablespace_path: '16385=/srv/ts1;16386=/srv/ts2', allow_incremental_backups: 'enabled' })}\n` +
        `${serverSection(cluster, 'down', { port: String(downPort), retention_policy: '4 WEEKS', description: '"Gone away"' })}`,
    );
    assert.equal((await setup.bart(['INIT', '-s', 'all', '--no-configure'])).code, 0);
    await cluster.query("ALTER SYSTEM SET archive_mode = 'on'");
    await cluster.query("ALTER SYSTEM SET archive_command = 'cp %p /mnt/archive/%f'");
    await cluster.restart();

    // Catalog contents: three segments (one compressed), other archive files that do not count, a backup file.
    const archiveDir = join(setup.backupPath, 'live', 'archived_wals');
    const seg = Buffer.alloc(1024 * 1024, 1);
    writeOwned(join(archiveDir, '000000010000000000000001'), seg);
    writeOwned(join(archiveDir, '000000010000000000000002'), seg);
    writeOwned(join(archiveDir, '000000010000000000000003.gz'), Buffer.alloc(1000));
    writeOwned(join(archiveDir, '00000002.history'), Buffer.alloc(24));
    writeOwned(join(archiveDir, '000000010000000000000002.00000028.backup'), Buffer.alloc(300));
    writeOwned(join(archiveDir, '000000010000000000000004.partial'), seg);
    writeOwned(join(setup.backupPath, 'live', 'backupinfo-like-file'), Buffer.alloc(1024 * 1024 - 24 - 300 - 1000));
    const expectedBytes = 4 * 1024 * 1024; // 3 MB of segments/partial + 1 MB of the rest

    const r = await setup.bart(['SHOW-SERVERS']);
    assert.equal(r.code, 0, r.stderr);
    const blocks = r.stdout.replace(/\n$/, '').split('\n\n');
    assert.equal(blocks.length, 2, `two servers separated by one blank line:\n${r.stdout}`);
    for (const block of blocks) {
      const lines = block.split('\n');
      assert.deepEqual(
        lines.map((l) => l.slice(0, 20).trimEnd()),
        FIELDS,
        'every field, in order',
      );
      for (const l of lines) assert.match(l, /^.{20}:( .*)?$/, `aligned at column 21: "${l}"`);
    }
    const value = (block: string, key: string) => {
      const line = block.split('\n').find((l) => l.startsWith(key.padEnd(20)));
      return line?.slice(22) ?? '';
    };
    const [live, down] = blocks as [string, string];
    assert.equal(value(live, 'SERVER NAME'), 'live');
    assert.equal(value(live, 'BACKUP FRIENDLY NAME'), 'live_%year-%month-%day');
    assert.equal(value(live, 'PORT'), String(cluster.port));
    assert.equal(value(live, 'RETENTION POLICY'), '8 Backups');
    assert.equal(value(live, 'DISK UTILIZATION'), '4.00 MB');
    assert.equal(value(live, 'NUMBER OF ARCHIVES'), '3');
    assert.equal(value(live, 'ARCHIVE PATH'), archiveDir);
    assert.equal(value(live, 'ARCHIVE COMMAND'), 'cp %p /mnt/archive/%f', "the running server's archive_command");
    assert.equal(value(live, 'XLOG METHOD'), 'stream');
    assert.equal(value(live, 'WAL COMPRESSION'), 'enabled');
    assert.equal(value(live, 'TABLESPACE PATH(s)'), '16385=/srv/ts1;16386=/srv/ts2');
    assert.equal(value(live, 'INCREMENTAL BACKUP'), 'ENABLED');
    assert.equal(value(down, 'SERVER NAME'), 'down');
    assert.equal(value(down, 'RETENTION POLICY'), '4 Weeks');
    assert.equal(value(down, 'DISK UTILIZATION'), '0.00 bytes');
    assert.equal(value(down, 'NUMBER OF ARCHIVES'), '0');
    assert.match(
      value(down, 'ARCHIVE COMMAND'),
      /bart\.js -c .* ARCHIVE-PUSH -s down %p$/,
      'unreachable: the command INIT would set',
    );
    assert.equal(value(down, 'DESCRIPTION'), '"Gone away"');
    assert.equal(value(down, 'INCREMENTAL BACKUP'), 'DISABLED');
    assert.equal(value(live, 'REPOSITORY'), join(setup.backupPath, 'live'));
    assert.equal(value(live, 'ENCRYPTION'), 'none');

    const json = await setup.bart(['SHOW-SERVERS', '-s', 'LIVE', '--output', 'json']);
    assert.equal(json.code, 0, json.stderr);
    const parsed = JSON.parse(json.stdout) as Array<Record<string, unknown>>;
    assert.equal(parsed.length, 1);
    assert.deepEqual(parsed[0], {
      serverName: 'live',
      backupFriendlyName: 'live_%year-%month-%day',
      hostName: '127.0.0.1',
      userName: 'postgres',
      port: cluster.port,
      remoteHost: null,
      retentionPolicy: '8 Backups',
      diskUtilization: '4.00 MB',
      diskUtilizationBytes: expectedBytes,
      numberOfArchives: 3,
      archivePath: archiveDir,
      archiveCommand: 'cp %p /mnt/archive/%f',
      archiveCommandSource: 'server',
      xlogMethod: 'stream',
      walCompression: 'enabled',
      tablespacePaths: '16385=/srv/ts1;16386=/srv/ts2',
      incrementalBackup: 'ENABLED',
      description: `test cluster PostgreSQL ${version}`,
      repository: 'posix',
      repositoryLocation: join(setup.backupPath, 'live'),
      repositoryCipher: 'none',
    });

    const unknown = await setup.bart(['SHOW-SERVERS', '-s', 'nosuch']);
    assert.notEqual(unknown.code, 0);
    assert.match(
      unknown.stderr,
      /^ERROR:\s+server "nosuch" is not defined in .*bart\.cfg \(servers defined: Live, down\)/,
    );
  } finally {
    await cluster.destroy();
    setup.cleanup();
  }
});
