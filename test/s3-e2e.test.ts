// Concept: the end-to-end run of a DBA against an S3 repository (real radosgw), with the documented CLI and bart.cfg only — INIT, CHECK-CONFIG, full and incremental backups under load, SHOW-BACKUPS, VERIFY-CHKSUM, PITR RESTORE, MANAGE -d, DELETE, a tampered object, a remote server.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createBartSetup, serverSection, type BartSetup } from './harness/bart.js';
import { TestCluster } from './harness/cluster.js';
import { pgbenchInit, pgbenchRun, tableFingerprints } from './harness/load.js';
import { removeTree } from './harness/os.js';
import { versionsUnderTest } from './harness/pg-binaries.js';
import { radosgwInstalled, TestS3 } from './harness/s3.js';
import { BART_TEST_USER, TestSshd } from './harness/sshd.js';
import { restoreToTimeAndCompare } from './harness/pitr-check.js';
import { waitFor } from './harness/wait.js';
import { e2eOnly } from './harness/test-size.js';
import { S3Storage } from '../src/storage/s3/s3-storage.js';
import { Secret } from '../src/util/secret.js';

const skip = radosgwInstalled() ? false : 'radosgw, ceph-mon and ceph-osd are not installed (scripts/install-deps.sh)';
const version = versionsUnderTest()[0]!;
/** The suite below runs in `npm run test:e2e`: each of its steps has its own test in npm test. */
const heavy = e2eOnly(
  'npm test runs these steps end to end on posix, and the S3 driver against the same storage contract in storage-driver',
);
const BUCKET = 'pgbart-e2e';
const PREFIX = 'fleet';
const SERVER = 'prod';
const SEGMENT_RE = /^[0-9A-F]{24}$/;

let s3: TestS3 | undefined;

before(async () => {
  if (skip !== false) return;
  s3 = await TestS3.start();
  await s3.createBucket(BUCKET);
});
after(async () => {
  await s3?.stop();
});

/** The [BART] lines of an S3 repository in the test bucket, as a DBA writes them. */
function s3Globals(prefix = PREFIX): Record<string, string> {
  return {
    repository: 's3',
    s3_endpoint: s3!.httpEndpoint,
    s3_region: s3!.region,
    s3_bucket: BUCKET,
    s3_prefix: prefix,
    s3_uri_style: 'path',
    s3_key: s3!.accessKey,
    s3_key_secret: s3!.secretKey,
  };
}

/** Keys in the bucket below `<prefix>/<server>/`, relative to it. */
async function keysBelow(server: string, prefix = PREFIX): Promise<string[]> {
  const below = `${prefix}/${server}/`;
  return (await s3!.bucketEntries(BUCKET))
    .map((e) => e.name)
    .filter((n) => n.startsWith(below))
    .map((n) => n.slice(below.length))
    .sort();
}

/** The backup identifier BACKUP printed. */
function backupId(r: { code: number | null; stdout: string; stderr: string }): string {
  const m = /backup identifier: '(\d+)'/.exec(r.stdout);
  assert.ok(r.code === 0 && m, `BACKUP failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
  return m[1]!;
}

describe(`end to end on S3 (radosgw), PostgreSQL ${version}`, { concurrency: false, skip: skip || heavy }, () => {
  let cluster: TestCluster;
  let setup: BartSetup;
  let storage: S3Storage;
  let fullId = '';
  let incrId = '';
  let target = '';
  let atTarget: Record<string, string> = {};

  before(async () => {
    cluster = await TestCluster.create({ version, conf: { archive_mode: 'on' } });
    setup = createBartSetup(s3Globals());
    setup.writeConfig(
      `${readFileSync(setup.configPath, 'utf8')}\n${serverSection(cluster, SERVER, {
        allow_incremental_backups: 'enabled',
        mbm_scan_timeout: '5',
        retention_policy: '1 BACKUPS',
      })}`,
    );
    storage = new S3Storage({
      bucket: BUCKET,
      root: `${PREFIX}/${SERVER}`,
      endpoint: s3!.httpEndpoint,
      region: s3!.region,
      forcePathStyle: true,
      verifyTls: true,
      credentials: { accessKeyId: new Secret(s3!.accessKey), secretAccessKey: new Secret(s3!.secretKey) },
    });
  });
  after(async () => {
    await storage?.close();
    await cluster?.destroy();
    setup?.cleanup();
  });

  test('INIT writes an ARCHIVE-PUSH archive_command; CHECK-CONFIG checks the bucket and the server', async () => {
    const init = await setup.bart(['INIT', '-s', SERVER]);
    assert.equal(init.code, 0, init.stderr);
    assert.match(String(await cluster.scalar('SHOW archive_command')), /ARCHIVE-PUSH -s prod %p$/);

    const global = await setup.bart(['CHECK-CONFIG']);
    assert.equal(global.code, 0, `${global.stdout}\n${global.stderr}`);
    assert.match(global.stdout + global.stderr, /s3:\/\/pgbart-e2e/);
    const server = await setup.bart(['CHECK-CONFIG', '-s', SERVER]);
    const out = server.stdout + server.stderr;
    assert.match(out, /archive_command is set: success/, out);
    // WAL archiving end to end: a segment was switched and arrived in the bucket.
    assert.ok(
      (await keysBelow(SERVER)).some((k) => SEGMENT_RE.test(k.replace(/^archived_wals\//, ''))),
      out,
    );
    assert.ok(!out.includes(s3!.secretKey), 'the secret key is never printed');
  });

  test('a full tar+lz4 BACKUP under pgbench load, then an incremental on top', async () => {
    await pgbenchInit(cluster, 1);
    const load = pgbenchRun(cluster, 5, 2);
    const full = await setup.bart(['BACKUP', '-s', SERVER, '-F', 't', '--compress', 'lz4', '--thread-count', '2']);
    await load;
    fullId = backupId(full);
    assert.ok(
      (await keysBelow(SERVER)).some((k) => k.startsWith(`${fullId}/base.tar.lz4`)),
      'the tar is in the bucket',
    );
    assert.ok(!existsSync(join(setup.backupPath, SERVER, fullId)), 'nothing of the backup on the BART host');

    await pgbenchRun(cluster, 2, 2);
    await cluster.query(
      'CREATE TABLE between_backups AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g',
    );
    const incr = await setup.bart(['BACKUP', '-s', SERVER, '--parent', fullId, '-F', 't', '--compress', 'lz4']);
    incrId = backupId(incr);

    // Committed after the incremental and before the target: PITR must bring these rows back.
    await pgbenchRun(cluster, 2, 2);
    await cluster.query('CREATE TABLE before_target AS SELECT g AS id FROM generate_series(1, 5000) g');
    atTarget = await tableFingerprints(cluster);
    await new Promise((r) => setTimeout(r, 1100));
    target = String(await cluster.scalar("SELECT to_char(clock_timestamp(), 'YYYY-MM-DD HH24:MI:SS.USOF')"));
    await new Promise((r) => setTimeout(r, 1100));
    // After the target: must not be restored; its commit is what recovery stops at.
    await cluster.query('CREATE TABLE after_target AS SELECT g AS id FROM generate_series(1, 100) g');
    await cluster.query('UPDATE pgbench_accounts SET abalance = abalance + 1000 WHERE aid <= 100');
    const last = await cluster.switchWal();
    await waitFor(`${last} in the bucket`, async () => (await keysBelow(SERVER)).includes(`archived_wals/${last}`), {
      timeoutMs: 60_000,
      intervalMs: 250,
    });
  });

  test('SHOW-BACKUPS lists the chain; VERIFY-CHKSUM reads every object back', async () => {
    const json = await setup.bart(['SHOW-BACKUPS', '-s', SERVER, '--output', 'json']);
    assert.equal(json.code, 0, json.stderr);
    const listed = JSON.parse(json.stdout) as { id: string; status: string; parent?: string; location?: string }[];
    const byId = new Map(listed.map((b) => [String(b.id), b]));
    assert.equal(byId.get(fullId)?.status, 'active', json.stdout);
    assert.equal(String(byId.get(incrId)?.parent), fullId, json.stdout);
    const table = await setup.bart(['SHOW-BACKUPS', '-s', SERVER]);
    assert.equal(table.code, 0, table.stderr);
    assert.ok(table.stdout.includes(fullId) && table.stdout.includes(incrId), table.stdout);

    const verify = await setup.bart(['VERIFY-CHKSUM', '-s', SERVER, '-i', 'all']);
    assert.equal(verify.code, 0, `${verify.stdout}\n${verify.stderr}`);
    for (const id of [fullId, incrId]) assert.match(verify.stdout, new RegExp(`${id}\\s+OK`), verify.stdout);
  });

  test('PITR RESTORE of the chain to a time after the incremental: started, WAL fetched from the bucket by ARCHIVE-GET, data as committed before the target', async () => {
    const path = join(setup.dir, 'restored');
    try {
      await restoreToTimeAndCompare({
        setup,
        version,
        server: SERVER,
        backupId: incrId,
        path,
        target,
        expected: atTarget,
      });
    } finally {
      removeTree(path);
    }
  });

  test("an object altered in the bucket behind pgbart's back: VERIFY-CHKSUM and RESTORE refuse, naming it", async () => {
    const key = `${incrId}/base.tar.lz4`;
    const name = `s3://${BUCKET}/${PREFIX}/${SERVER}/${key}`;
    const original = await storage.readAll(key, 1 << 30);
    try {
      // 16 bytes complemented, not one bit: a single flipped bit can leave the decompressed data unchanged (an LZ4
      // match offset moved within a run of zeros copies the same zeros). RESTORE then restores exactly the right
      // data, its SHA-256s verified, and only VERIFY-CHKSUM (the stored object's checksum) sees the alteration —
      // seen once in CI. Sixteen complemented bytes change what decodes, or make it undecodable.
      const altered = Buffer.from(original);
      const middle = Math.floor(altered.length / 2);
      for (let i = middle; i < middle + 16; i++) altered[i] = ~altered[i]! & 0xff;
      await storage.put(key, altered);
      const verify = await setup.bart(['VERIFY-CHKSUM', '-s', SERVER, '-i', incrId]);
      assert.notEqual(verify.code, 0, verify.stdout);
      // VERIFY-CHKSUM names the backup and the stored file in it (RESTORE below names the whole object).
      assert.match(
        verify.stderr,
        new RegExp(`backup ${incrId}: base\\.tar\\.lz4: stored file checksum mismatch`),
        verify.stderr,
      );
      assert.match(verify.stdout + verify.stderr, /FAILED/);

      const path = join(setup.dir, 'refused');
      const r = await setup.bart(['RESTORE', '-s', SERVER, '-i', incrId, '-p', path, '-w', '2']);
      assert.notEqual(r.code, 0, r.stdout);
      assert.ok(r.stderr.includes(name), r.stderr);
      assert.ok(!/^\s+at /m.test(r.stderr), `no stack trace: ${r.stderr}`);
      assert.ok(!existsSync(path), 'nothing restored');
    } finally {
      await storage.put(key, original);
    }
    const again = await setup.bart(['VERIFY-CHKSUM', '-s', SERVER, '-i', incrId]);
    assert.equal(again.code, 0, again.stdout);
  });

  test('MANAGE -d with retention_policy = 1 BACKUPS removes the obsolete chain and its WAL from the bucket; DELETE removes a backup', async () => {
    await pgbenchRun(cluster, 2, 2);
    const second = backupId(await setup.bart(['BACKUP', '-s', SERVER, '-F', 't', '--compress', 'lz4']));
    const before = await keysBelow(SERVER);
    const walBefore = before.filter(
      (k) => SEGMENT_RE.test(k.replace(/^archived_wals\//, '')) && k.startsWith('archived_wals/'),
    );
    assert.ok(before.some((k) => k.startsWith(`${fullId}/`)) && before.some((k) => k.startsWith(`${incrId}/`)));

    const manage = await setup.bart(['MANAGE', '-s', SERVER]);
    assert.equal(manage.code, 0, `${manage.stdout}\n${manage.stderr}`);
    const del = await setup.bart(['MANAGE', '-s', SERVER, '-d']);
    assert.equal(del.code, 0, `${del.stdout}\n${del.stderr}`);

    const json = JSON.parse((await setup.bart(['SHOW-BACKUPS', '-s', SERVER, '--output', 'json'])).stdout) as {
      id: string;
      firstWalFile?: string | null;
    }[];
    assert.deepEqual(
      json.map((b) => String(b.id)),
      [second],
    );
    const firstNeeded = json[0]!.firstWalFile!;
    assert.match(firstNeeded, SEGMENT_RE);
    const after = await keysBelow(SERVER);
    assert.ok(!after.some((k) => k.startsWith(`${fullId}/`) || k.startsWith(`${incrId}/`)), after.join(' '));
    const walAfter = after.filter((k) => k.startsWith('archived_wals/') && SEGMENT_RE.test(k.slice(14)));
    assert.ok(
      walBefore.some((k) => k.slice(14) < firstNeeded),
      `there was WAL older than ${firstNeeded} to remove`,
    );
    assert.ok(
      !walAfter.some((k) => k.slice(14) < firstNeeded),
      `WAL before ${firstNeeded} gone: ${walAfter.join(' ')}`,
    );
    assert.ok(
      walAfter.some((k) => k.slice(14) === firstNeeded),
      'the WAL the kept backup needs stays',
    );

    const drop = await setup.bart(['DELETE', '-s', SERVER, '-i', second]);
    assert.equal(drop.code, 0, `${drop.stdout}\n${drop.stderr}`);
    assert.ok(!(await keysBelow(SERVER)).some((k) => k.startsWith(`${second}/`)), 'DELETE removed every object');
    const none = await setup.bart(['SHOW-BACKUPS', '-s', SERVER, '--output', 'json']);
    assert.deepEqual(JSON.parse(none.stdout), []);
  });
});

test(
  `a remote server (PostgreSQL ${version}, loopback sshd) archives into S3 through the archive_command INIT writes`,
  { skip: skip || heavy },
  async () => {
    const cleanups: (() => Promise<void> | void)[] = [];
    try {
      const sshd = await TestSshd.start(['postgres', BART_TEST_USER]);
      cleanups.push(() => sshd.stop());
      sshd.authorize(BART_TEST_USER, 'postgres');
      sshd.authorize('postgres', BART_TEST_USER);
      const cluster = await TestCluster.create({ version, conf: { archive_mode: 'on' } });
      cleanups.push(() => cluster.destroy());
      const prefix = `${PREFIX}-remote`;
      const setup = createBartSetup({ ...s3Globals(prefix), bart_host: `${BART_TEST_USER}@${sshd.alias}` });
      cleanups.push(() => setup.cleanup());
      setup.writeConfig(
        `${readFileSync(setup.configPath, 'utf8')}\n${serverSection(cluster, 'rem', { remote_host: `postgres@${sshd.alias}` })}`,
      );
      execFileSync('chown', ['-R', `${BART_TEST_USER}:`, setup.dir]);

      const init = await setup.bart(['INIT', '-s', 'rem']);
      assert.equal(init.code, 0, init.stderr);
      assert.match(
        String(await cluster.scalar('SHOW archive_command')),
        /^ssh .*ARCHIVE-PUSH -s rem --stdin' %f < %p$/,
      );
      await cluster.query('CREATE TABLE r AS SELECT g AS id FROM generate_series(1, 20000) g');
      const last = await cluster.switchWal();
      await waitFor(
        `${last} archived into the bucket over ssh`,
        async () => (await keysBelow('rem', prefix)).includes(`archived_wals/${last}`),
        {
          timeoutMs: 60_000,
          intervalMs: 250,
        },
      );
      const full = await setup.bart(['BACKUP', '-s', 'rem', '-F', 't', '--compress', 'lz4']);
      const id = backupId(full);
      assert.ok(
        (await keysBelow('rem', prefix)).some((k) => k.startsWith(`${id}/`)),
        'the remote backup is in the bucket',
      );
      const verify = await setup.bart(['VERIFY-CHKSUM', '-s', 'rem']);
      assert.equal(verify.code, 0, `${verify.stdout}\n${verify.stderr}`);
    } finally {
      for (const c of cleanups.reverse()) await c();
    }
  },
);
