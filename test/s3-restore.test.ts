// RESTORE from an S3 repository (real radosgw): a full and an incremental backup restored, started and compared; a
// stored object altered behind pgbart's back is refused, naming it.
//
// The backups are taken on POSIX and their objects copied into the bucket one for one (the layout is the same), so
// this test needs only RESTORE's S3 side; the restore then has no local copy to fall back on (the POSIX catalog is
// emptied first).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createReadStream, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { S3Storage } from '../src/storage/s3/s3-storage.js';
import { Secret } from '../src/util/secret.js';
import { radosgwInstalled, TestS3 } from './harness/s3.js';
import { freshPath, startRestored, waitPromoted, type RestoreSource } from './harness/restore.js';
import { contentSnapshot, createIncrementalSource, takeBackup } from './harness/incremental.js';
import { pgbenchInit } from './harness/load.js';
import { removeTree, testUserName } from './harness/os.js';
import { TestSshd } from './harness/sshd.js';
import { e2eOnly } from './harness/test-size.js';

const skip = radosgwInstalled()
  ? e2eOnly(
      'npm test runs this engine end to end on a posix repository, and the S3 driver against the same storage contract in storage-driver',
    )
  : 'radosgw, ceph-mon and ceph-osd are not installed (scripts/install-deps.sh)';
const VERSION = 15;
const PREFIX = 'pgbart';

/** Every file below `dir`, as paths relative to it. */
function filesBelow(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out.push(relative(dir, p));
    }
  };
  walk(dir);
  return out;
}

describe('RESTORE from an S3 repository (radosgw)', { skip }, () => {
  let s3: TestS3;
  let src: RestoreSource;
  let bucket: string;
  let storage: S3Storage;
  let fullId: string;
  let incrId: string;
  let atFull: Record<string, string>;
  let atIncr: Record<string, string>;

  before(async () => {
    s3 = await TestS3.start();
    bucket = `pgbart-restore-${Date.now()}`;
    await s3.createBucket(bucket);
    src = await createIncrementalSource(VERSION);
    const c = src.cluster;
    await pgbenchInit(c, 1);
    await c.query(
      `CREATE TABLE big (id int, payload text); INSERT INTO big SELECT g, repeat(md5(g::text), 20) FROM generate_series(1, 30000) g`,
    );
    await c.query('CHECKPOINT');
    atFull = await contentSnapshot(c);
    fullId = await takeBackup(src, undefined, ['-F', 't', '--compress', 'lz4']);
    await c.query('UPDATE pgbench_accounts SET abalance = abalance + 3 WHERE aid % 7 = 0');
    await c.query('INSERT INTO big SELECT g, md5(g::text) FROM generate_series(30001, 40000) g');
    await c.query('CHECKPOINT');
    atIncr = await contentSnapshot(c);
    incrId = await takeBackup(src, fullId, ['-F', 't', '--compress', 'lz4']);
    await src.archiveCurrentWal();

    // The server's POSIX catalog, object for object, into <bucket>/<prefix>/<server>; then emptied here.
    const catalog = join(src.setup.backupPath, src.server);
    storage = new S3Storage({
      bucket,
      root: `${PREFIX}/${src.server}`,
      endpoint: s3.httpEndpoint,
      region: s3.region,
      forcePathStyle: true,
      verifyTls: true,
      credentials: { accessKeyId: new Secret(s3.accessKey), secretAccessKey: new Secret(s3.secretKey) },
    });
    for (const file of filesBelow(catalog)) {
      if (file.startsWith('.') || file.includes('/.')) continue; // lock and reader files stay on the BART host
      const w = await storage.create(file, { sizeHint: statSync(join(catalog, file)).size });
      for await (const chunk of createReadStream(join(catalog, file))) await w.write(chunk as Buffer);
      await w.finish();
    }
    for (const e of readdirSync(catalog)) if (!e.startsWith('.')) rmSync(join(catalog, e), { recursive: true });
    src.configure(c, {
      allow_incremental_backups: 'enabled',
      repository: 's3',
      s3_endpoint: s3.httpEndpoint,
      s3_region: s3.region,
      s3_bucket: bucket,
      s3_prefix: PREFIX,
      s3_uri_style: 'path',
      s3_key: s3.accessKey,
      s3_key_secret: s3.secretKey,
    });
  });

  after(async () => {
    await storage?.close();
    await src?.destroy();
    await s3?.stop();
  });

  for (const which of ['full', 'incremental'] as const) {
    test(`RESTORE of the ${which} backup reads the bucket; the restored cluster holds the backed-up data`, async () => {
      const id = which === 'full' ? fullId : incrId;
      const path = freshPath(src, `data-${which}`);
      // -c: the WAL comes from the bucket's archive too, copied into the restored cluster.
      const r = await src.restore([
        '-i',
        id,
        '-p',
        path,
        '-w',
        '2',
        '--target-immediate',
        '--target-action',
        'promote',
        '-c',
      ]);
      assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
      assert.ok(readdirSync(join(path, 'archived_wals')).length >= 1, 'WAL copied from the bucket');
      const restored = await startRestored(VERSION, path);
      try {
        await waitPromoted(restored);
        assert.deepEqual(await contentSnapshot(restored), which === 'full' ? atFull : atIncr);
      } finally {
        await restored.destroy();
        removeTree(path);
      }
    });
  }

  test('without -c, the restore_command of an S3 server is bart ARCHIVE-GET', async () => {
    const path = freshPath(src, 'data-get');
    const r = await src.restore(['-i', fullId, '-p', path]);
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    const auto = readFileSync(join(path, 'postgresql.auto.conf'), 'utf8');
    assert.match(auto, /^restore_command = '.*bart\.js'' -c ''.*bart\.cfg'' ARCHIVE-GET -s ''src'' %f %p'$/m);
    removeTree(path);
  });

  test('RESTORE -r from an S3 repository: written over ssh, started, compared; restore_command runs ARCHIVE-GET over ssh', async () => {
    const user = testUserName();
    const sshd = await TestSshd.start([user]);
    const config = readFileSync(src.setup.configPath, 'utf8');
    try {
      // The restored cluster's restore_command reaches the BART host (this one) through the same sshd.
      sshd.authorize(user, user);
      writeFileSync(src.setup.configPath, config.replace(/^bart_host = .*$/m, `bart_host = ${user}@${sshd.alias}`));
      const path = freshPath(src, 'data-remote');
      const args = ['-i', incrId, '-p', path, '-r', `${user}@${sshd.alias}`, '--target-immediate'];
      const r = await src.restore([...args, '--target-action', 'promote']);
      assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
      const auto = readFileSync(join(path, 'postgresql.auto.conf'), 'utf8');
      const command = /^restore_command = '(.*)'$/m.exec(auto)?.[1]?.replace(/''/g, "'");
      assert.ok(command, auto);
      assert.ok(command.startsWith(`ssh -o BatchMode=yes ${user}@${sshd.alias} '`), command);
      assert.match(command, /ARCHIVE-GET -s src %f "\$t\/f" >&2 && cat "\$t\/f"; .* > %p\.tmp && mv %p\.tmp %p$/);
      const restored = await startRestored(VERSION, path);
      try {
        await waitPromoted(restored);
        assert.deepEqual(await contentSnapshot(restored), atIncr);
      } finally {
        await restored.destroy();
        removeTree(path);
      }
    } finally {
      writeFileSync(src.setup.configPath, config);
      await sshd.stop();
    }
  });

  test('an object altered in the bucket (same size, then another size) is refused, naming it', async () => {
    const key = `${incrId}/base.tar.lz4`;
    const name = `s3://${bucket}/${PREFIX}/${src.server}/${key}`;
    const original = await storage.readAll(key, 1 << 30);
    try {
      const flipped = Buffer.from(original);
      flipped[Math.floor(flipped.length / 2)]! ^= 0x55;
      await storage.put(key, flipped);
      const path = freshPath(src, 'data-altered');
      const r = await src.restore(['-i', incrId, '-p', path, '-w', '2']);
      assert.notEqual(r.code, 0, r.stdout);
      assert.ok(r.stderr.includes(name), r.stderr);
      assert.match(r.stderr, /checksum mismatch|damaged|CRC/);
      assert.throws(() => statSync(path), 'PATH absent stays absent');

      await storage.put(key, original.subarray(0, original.length - 100));
      const r2 = await src.restore(['-i', incrId, '-p', path]);
      assert.notEqual(r2.code, 0, r2.stdout);
      assert.ok(
        r2.stderr.includes(`"${name}" is ${original.length - 100} bytes, the manifest says ${original.length}`),
        r2.stderr,
      );
    } finally {
      await storage.put(key, original);
    }
  });
});
