// Concept: retention on an S3 repository — INIT, SHOW-BACKUPS' WAL usage, MANAGE -l/-d, DELETE and its crash points, leftovers, against real radosgw.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  CreateMultipartUploadCommand,
  ListMultipartUploadsCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { loadConfig } from '../src/config/parse-config.js';
import { writeBackupInfo, type BackupInfo } from '../src/catalog/backup-info.js';
import { openRepository, openWalArchive } from '../src/storage/open-repository.js';
import type { RepositoryStorage } from '../src/storage/storage.js';
import { createBartSetup, type BartSetup } from './harness/bart.js';
import { freePort } from './harness/cluster.js';
import { radosgwInstalled, TestS3 } from './harness/s3.js';
import { e2eOnly } from './harness/test-size.js';

const skip = radosgwInstalled()
  ? e2eOnly(
      'npm test runs retention, MANAGE and DELETE end to end on posix, and the S3 driver against the same storage contract in storage-driver',
    )
  : 'radosgw not installed (scripts/install-deps.sh)';
const BUCKET = 'pgbart-retention';
const PREFIX = 'fleet';
const SERVER = 'pg';
const SEG = 16 * 1024 * 1024;

interface Shown {
  id: string;
  status: string;
  walFiles: number;
  walBytes: number;
  firstWalFile: string | null;
  lastWalFile: string | null;
  location: string;
}
interface Listing {
  obsoleteBackups: { id: string }[];
  wal: { files: number; bytes: number; names: string[]; skipped: boolean };
  leftovers: { kind: string; path: string; bytes: number }[];
}

/** Name of segment `n` of timeline 1 (16 MiB segments). */
const seg = (n: number) => `00000001${'0'.repeat(8)}${n.toString(16).toUpperCase().padStart(8, '0')}`;

/** A pid that certainly belongs to no process any more. */
function deadPid(): number {
  return Number(spawnSync('sh', ['-c', 'echo $$']).stdout.toString().trim());
}

/** A complete backup's backupinfo (what BACKUP writes; only what retention reads has to be right). */
function backupInfo(id: string, startSeg: number, location: string): BackupInfo {
  const start = new Date(Number(id));
  return {
    status: 'active',
    id,
    location,
    sizeBytes: 4096,
    dataBytes: 4096,
    format: 'tar',
    compression: 'none',
    compressionLevel: 0,
    timezone: 'UTC',
    xlogMethod: 'fetch',
    checksumAlgorithm: 'NONE',
    artifactChecksums: [],
    tablespaces: [],
    timeline: 1,
    startWalFile: seg(startSeg),
    stopWalFile: seg(startSeg),
    startLsn: `0/${(startSeg * SEG + 0x28).toString(16).toUpperCase()}`,
    stopLsn: `0/${(startSeg * SEG + 0x100).toString(16).toUpperCase()}`,
    checkpointLsn: `0/${(startSeg * SEG + 0x28).toString(16).toUpperCase()}`,
    walFiles: [seg(startSeg)],
    walBytes: SEG,
    serverVersionNum: 150000,
    systemIdentifier: '7000000000000000000',
    walSegmentSize: SEG,
    engine: 'native',
    threadCount: 1,
    startTime: start,
    stopTime: new Date(start.getTime() + 60_000),
  };
}

describe('retention on an S3 repository (real radosgw)', { skip }, () => {
  let s3: TestS3;
  let setup: BartSetup;
  let repo: RepositoryStorage;
  let archive: RepositoryStorage;
  let client: S3Client;
  const day = (d: number) => String(Date.UTC(2026, 0, d, 12));
  const [b1, b2, b3, b4, b5] = [1, 2, 3, 4, 5].map(day) as [string, string, string, string, string];

  const bart = (args: string[], env: NodeJS.ProcessEnv = {}) => setup.bart(args, env);
  const ok = async (args: string[], env: NodeJS.ProcessEnv = {}) => {
    const r = await bart(args, env);
    assert.equal(r.code, 0, `bart ${args.join(' ')} failed:\n${r.stdout}\n${r.stderr}`);
    assert.doesNotMatch(r.stderr, /^\s+at /m, 'no stack trace');
    return r;
  };
  const shown = async () =>
    JSON.parse((await ok(['SHOW-BACKUPS', '-s', SERVER, '--output', 'json'])).stdout) as Shown[];
  const listing = async () =>
    (JSON.parse((await ok(['MANAGE', '-s', SERVER, '-l', '--output', 'json'])).stdout) as Listing[])[0]!;
  /** Every key below the server's root in the bucket, relative to it. */
  const keys = async (storage: RepositoryStorage = repo) => {
    const out: string[] = [];
    for await (const page of storage.list('')) out.push(...page.objects.map((o) => o.key));
    return out.sort();
  };
  const uploads = async () =>
    (await client.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: `${PREFIX}/${SERVER}/` }))).Uploads ??
    [];
  /** A complete backup as BACKUP leaves it in a bucket: its files, then its backupinfo. */
  const fabricate = async (id: string, startSeg: number) => {
    await repo.put(`${id}/base.tar`, Buffer.alloc(4096, 7));
    await repo.put(`${id}/manifest.jsonl`, Buffer.from('{"h":{"manifest":"pgbart"}}\n'));
    await writeBackupInfo(repo, id, backupInfo(id, startSeg, `${repo.location}/${id}`));
  };

  before(async () => {
    s3 = await TestS3.start();
    await s3.createBucket(BUCKET);
    setup = createBartSetup({
      repository: 's3',
      s3_endpoint: s3.httpEndpoint,
      s3_bucket: BUCKET,
      s3_prefix: PREFIX,
      s3_key: s3.accessKey,
      s3_key_secret: s3.secretKey,
    });
    // The database server is not running: retention needs none.
    setup.writeConfig(
      readFileSync(setup.configPath, 'utf8') +
        `[${SERVER}]\nhost = 127.0.0.1\nport = ${await freePort()}\nuser = postgres\ncluster_owner = postgres\nretention_policy = 2 BACKUPS\n`,
    );
    const config = loadConfig(setup.configPath);
    const server = config.servers.find((s) => s.name === SERVER)!;
    repo = openRepository(config, server);
    archive = openWalArchive(config, server);
    assert.equal(repo.kind, 's3');
    client = new S3Client({ ...s3.clientConfig() });
  });
  after(async () => {
    client?.destroy();
    await repo?.close();
    await archive?.close();
    setup?.cleanup();
    await s3?.stop();
  });

  test('INIT makes the local lock directory only and points at CHECK-CONFIG', async () => {
    const r = await ok(['INIT', '-s', SERVER, '--no-configure']);
    assert.ok(existsSync(join(setup.backupPath, SERVER)), 'the lock directory exists on the BART host');
    assert.ok(!existsSync(join(setup.backupPath, SERVER, 'archived_wals')), 'no local archive directory');
    assert.match(r.stdout, new RegExp(`s3://${BUCKET}/${PREFIX}/${SERVER}: INIT creates nothing there`));
    assert.match(r.stdout, /bart CHECK-CONFIG -s pg/);
    await ok(['INIT', '-s', SERVER, '--no-configure']); // again: nothing to do, still fine
    assert.deepEqual(await keys(), [], 'INIT wrote nothing into the bucket');
  });

  test('SHOW-BACKUPS WAL usage from the listing; MANAGE marks, -l lists, -d removes backups, WAL and leftovers', async () => {
    // Four backups starting in segments 2, 4, 6 and 8; WAL segments 1..10, an MBM, a .backup file.
    for (const [id, start] of [
      [b1, 2],
      [b2, 4],
      [b3, 6],
      [b4, 8],
    ] as const)
      await fabricate(id, start);
    for (let n = 1; n <= 10; n++) await archive.put(seg(n), Buffer.alloc(1000 + n, n));
    await archive.put(`${seg(2)}.00000028.backup`, Buffer.from('START WAL LOCATION'));
    await archive.put('00000001_0000000002000028_0000000003000000.mbm', Buffer.alloc(64));
    const before = await shown();
    assert.deepEqual(
      before.map((b) => [b.id, b.status, b.walFiles, b.walBytes, b.firstWalFile, b.lastWalFile]),
      [
        [b4, 'active', 3, 1008 + 1009 + 1010, seg(8), seg(10)],
        [b3, 'active', 2, 1006 + 1007, seg(6), seg(7)],
        [b2, 'active', 2, 1004 + 1005, seg(4), seg(5)],
        [b1, 'active', 2, 1002 + 1003, seg(2), seg(3)],
      ],
    );
    assert.equal(before[0]!.location, `s3://${BUCKET}/${PREFIX}/${SERVER}/${b4}`);

    // Leftovers of killed commands: a BACKUP (its marker, an object and a multipart upload it never
    // finished), an interrupted deletion (tombstone and what is left), a CHECK-CONFIG's test object.
    const dead = deadPid();
    await writeBackupInfo(repo, `${b5}.partial`, {
      ...backupInfo(b5, 10, `${repo.location}/${b5}`),
      status: 'in progress',
      pid: dead,
    });
    await repo.put(`${b5}/base.tar`, Buffer.alloc(2048));
    const upload = await client.send(
      new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: `${PREFIX}/${SERVER}/${b5}/16384.tar` }),
    );
    await client.send(
      new UploadPartCommand({
        Bucket: BUCKET,
        Key: `${PREFIX}/${SERVER}/${b5}/16384.tar`,
        UploadId: upload.UploadId!,
        PartNumber: 1,
        Body: Buffer.alloc(5 * 1024 * 1024, 1),
      }),
    );
    const gone = String(Date.UTC(2025, 11, 1));
    await repo.put(`${gone}.deleting/marker`, Buffer.from('{}\n'));
    await repo.put(`${gone}/base.tar`, Buffer.alloc(512));
    await repo.put(`.pgbart-check-${dead}-0123456789ab`, Buffer.alloc(100));
    assert.equal((await uploads()).length, 1, 'the abandoned upload is there');

    const during = await shown();
    assert.deepEqual(
      during.map((b) => [b.id, b.status]),
      [
        [b5, 'failed'],
        [b4, 'active'],
        [b3, 'active'],
        [b2, 'active'],
        [b1, 'active'],
      ],
      'the tombstoned backup is neither a backup nor damaged; the dead BACKUP is failed',
    );

    await ok(['MANAGE', '-s', SERVER]);
    const l = await listing();
    assert.deepEqual(l.obsoleteBackups.map((b) => b.id).sort(), [b1, b2]);
    assert.equal(l.wal.skipped, false);
    assert.deepEqual(l.wal.names, [
      seg(1),
      seg(2),
      `${seg(2)}.00000028.backup`,
      seg(3),
      seg(4),
      seg(5),
      '00000001_0000000002000028_0000000003000000.mbm',
    ]);
    assert.equal(l.wal.bytes, 64 + 18 + [1, 2, 3, 4, 5].reduce((s, n) => s + 1000 + n, 0));
    assert.deepEqual(
      l.leftovers.map((x) => [x.kind, x.path, x.bytes]).sort(),
      [
        ['deleting-backup', `s3://${BUCKET}/${PREFIX}/${SERVER}/${gone}.deleting`, 3 + 512],
        [
          'failed-backup',
          `s3://${BUCKET}/${PREFIX}/${SERVER}/${b5}.partial`,
          2048 + (await repo.stat(`${b5}.partial/backupinfo`))!.size,
        ],
        ['temp-file', `s3://${BUCKET}/${PREFIX}/${SERVER}/.pgbart-check-${dead}-0123456789ab`, 100],
      ].sort(),
    );

    const stored = await keys();
    const dry = await ok(['MANAGE', '-s', SERVER, '-d', '-n']);
    assert.match(dry.stdout, /\(dry run\) would delete 7 archived WAL\/MBM file\(s\)/);
    assert.deepEqual(await keys(), stored, 'a dry run changes nothing');
    assert.equal((await uploads()).length, 1);

    const d = await ok(['MANAGE', '-s', SERVER, '-d']);
    assert.match(d.stdout, /deleted 2 backup\(s\), 7 archived WAL\/MBM file\(s\) .*, 3 leftover\(s\)/);
    assert.deepEqual(
      (await keys()).filter((k) => !k.startsWith('archived_wals/')),
      [
        `${b3}/backupinfo`,
        `${b3}/base.tar`,
        `${b3}/manifest.jsonl`,
        `${b4}/backupinfo`,
        `${b4}/base.tar`,
        `${b4}/manifest.jsonl`,
      ],
    );
    assert.deepEqual(await keys(archive), [6, 7, 8, 9, 10].map(seg));
    assert.deepEqual(await uploads(), [], 'the abandoned multipart upload was aborted');
    assert.deepEqual(
      (await shown()).map((b) => b.id),
      [b4, b3],
    );
  });

  test('DELETE killed after its tombstone and after its WAL step: never a half backup; MANAGE -d finishes the job', async () => {
    // Killed right after the tombstone: backupinfo still there, but the backup is gone from every listing.
    const killed = await bart(['DELETE', '-s', SERVER, '-i', b3], { PGBART_CRASH_AT: 'delete:tombstoned' });
    assert.equal(killed.code, null, `DELETE was not killed:\n${killed.stdout}\n${killed.stderr}`);
    assert.ok((await repo.stat(`${b3}/backupinfo`)) !== undefined, 'killed before the backupinfo went');
    assert.deepEqual(
      (await shown()).map((b) => [b.id, b.status]),
      [[b4, 'active']],
    );
    let l = await listing();
    assert.deepEqual(
      l.leftovers.map((x) => x.kind),
      ['deleting-backup'],
    );
    // b3 no longer counts: the WAL before b4's start may go.
    assert.deepEqual(l.wal.names, [seg(6), seg(7)]);
    await ok(['MANAGE', '-s', SERVER, '-d']);
    assert.deepEqual(
      (await keys()).filter((k) => !k.startsWith('archived_wals/')),
      [`${b4}/backupinfo`, `${b4}/base.tar`, `${b4}/manifest.jsonl`],
    );
    assert.deepEqual(await keys(archive), [8, 9, 10].map(seg));

    // Killed once its backupinfo is gone: INIT -r must not bring the backup back from its manifest
    // (its WAL may be gone already); it only tries b4 (whose fabricated manifest it cannot use).
    await fabricate(b5, 12);
    const killed3 = await bart(['DELETE', '-s', SERVER, '-i', b5], { PGBART_CRASH_AT: 'delete:renamed' });
    assert.equal(killed3.code, null, `DELETE was not killed:\n${killed3.stdout}\n${killed3.stderr}`);
    assert.deepEqual(
      (await keys()).filter((k) => k.startsWith(b5)),
      [`${b5}.deleting/marker`, `${b5}/base.tar`, `${b5}/manifest.jsonl`],
    );
    const rebuild = await bart(['INIT', '-r', '-s', SERVER]);
    assert.match(rebuild.stderr, new RegExp(`cannot rebuild the backupinfo of backup ${b4}`));
    assert.doesNotMatch(`${rebuild.stdout}${rebuild.stderr}`, new RegExp(b5));
    assert.deepEqual(
      (await shown()).map((b) => b.id),
      [b4],
    );
    await ok(['MANAGE', '-s', SERVER, '-d']);
    assert.deepEqual(
      (await keys()).filter((k) => k.startsWith(b5)),
      [],
    );

    // Killed after removing WAL (the last backup: everything goes), before its objects go.
    const killed2 = await bart(['DELETE', '-s', SERVER, '-i', b4], { PGBART_CRASH_AT: 'delete:wal' });
    assert.equal(killed2.code, null, `DELETE was not killed:\n${killed2.stdout}\n${killed2.stderr}`);
    assert.deepEqual(await shown(), [], 'no backup, no damaged one');
    l = await listing();
    assert.deepEqual(
      l.leftovers.map((x) => x.kind),
      ['deleting-backup'],
    );
    await ok(['MANAGE', '-s', SERVER, '-d']);
    assert.deepEqual(await keys(), []);
    assert.deepEqual(await keys(archive), []);

    // A DELETE that is not interrupted leaves nothing behind.
    await fabricate(b5, 12);
    await archive.put(seg(12), Buffer.alloc(10));
    const r = await ok(['DELETE', '-s', SERVER, '-i', b5]);
    assert.match(r.stdout, /deleted 1 backup\(s\) and 1 archived WAL\/MBM file\(s\)/);
    assert.deepEqual(await keys(), []);
    assert.deepEqual((await listing()).leftovers, []);
  });
});
