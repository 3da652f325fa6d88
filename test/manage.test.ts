import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { createBartSetup, type BartSetup } from './harness/bart.js';
import { testUserIds } from './harness/os.js';

/** Option checks and catalog-only behaviour of MANAGE, DELETE and INIT -r (no PostgreSQL needed: they refuse before connecting). */
describe('MANAGE / DELETE / INIT -r refusals', () => {
  let setup: BartSetup;
  before(() => {
    setup = createBartSetup(
      {},
      '[pg]\nhost = 127.0.0.1\nport = 1\nuser = postgres\ncluster_owner = postgres\nretention_policy = 2\n',
    );
    mkdirSync(join(setup.backupPath, 'pg', 'archived_wals'), { recursive: true });
    // A backup directory whose backupinfo and manifest are both damaged.
    mkdirSync(join(setup.backupPath, 'pg', '1700000000000'));
    writeFileSync(join(setup.backupPath, 'pg', '1700000000000', 'manifest.jsonl'), '{"h":{"manifest":"pgbart"}}\n');
    const ids = testUserIds();
    if (ids) spawnSync('chown', ['-R', `${ids.uid}:${ids.gid}`, setup.backupPath]);
  });
  after(() => setup.cleanup());

  const refused = async (args: string[], message: RegExp) => {
    const r = await setup.bart(args);
    assert.notEqual(r.code, 0, `bart ${args.join(' ')} succeeded`);
    assert.match(r.stderr, message);
  };

  test('bad option combinations name the options', async () => {
    await refused(['MANAGE', '-l', '-d'], /ERROR: +MANAGE options -l and -d cannot be combined/);
    await refused(['MANAGE', '-c', 'keep'], /ERROR: +MANAGE -c keep\|nokeep needs -i/);
    await refused(['MANAGE', '-i', 'all'], /ERROR: +MANAGE -i\/--backupid is only valid together with -c/);
    await refused(['MANAGE', '--output', 'json'], /ERROR: +MANAGE --output json is only valid with -l/);
    await refused(['MANAGE', '-s', 'nosuch'], /ERROR: +server "nosuch" is not defined/);
    await refused(['DELETE', '-s', 'pg'], /ERROR: +DELETE needs -i/);
    await refused(['DELETE', '-i', 'all'], /ERROR: +DELETE needs -s/);
    await refused(['DELETE', '-s', 'pg', '-i', 'nosuch'], /ERROR: +backup "nosuch" not found for server pg/);
    await refused(
      ['DELETE', '-s', 'pg', '-i', '1700000000000,'],
      /ERROR: +DELETE -i "1700000000000,": empty backup identifier/,
    );
    await refused(['MANAGE', '-s', 'pg', '-c', 'keep', '-i', 'nosuch'], /backup "nosuch" not found for server pg/);
  });

  test('PGBART_NOW must be a time', async () => {
    const r = await setup.bart(['MANAGE', '-s', 'pg'], { PGBART_NOW: 'tomorrow' });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /ERROR: +environment variable PGBART_NOW="tomorrow" is not an ISO 8601 time/);
  });

  test('MANAGE -l on a catalog without valid backups keeps WAL for an unreadable one; INIT -r names the damaged manifest', async () => {
    const r = await setup.bart(['MANAGE', '-s', 'pg', '-l', '--output', 'json']);
    assert.equal(r.code, 0, r.stderr);
    const listing = JSON.parse(r.stdout) as {
      server: string;
      retentionPolicy: string;
      obsoleteBackups: unknown[];
      leftovers: unknown[];
      wal: { skipped: boolean; reason: string };
    }[];
    assert.deepEqual(
      listing.map((l) => [l.server, l.retentionPolicy, l.obsoleteBackups.length, l.leftovers.length]),
      [['pg', '2 Backups', 0, 0]],
    );
    // A backup directory without readable backupinfo may come back with INIT -r: no archived WAL may go meanwhile.
    assert.equal(listing[0]!.wal.skipped, true);
    assert.match(
      listing[0]!.wal.reason,
      /backup 1700000000000 has no readable backupinfo \(repair it with bart INIT -r -s pg\)/,
    );
    const rebuild = await setup.bart(['INIT', '-r', '-s', 'pg']);
    assert.notEqual(rebuild.code, 0);
    assert.match(
      rebuild.stderr,
      /ERROR: +cannot rebuild the backupinfo of backup 1700000000000: .*manifest\.jsonl.*(incomplete|end line)/,
    );
  });
});
