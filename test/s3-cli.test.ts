// Concept: the bart CLI with an S3 repository — CHECK-CONFIG's bucket check and SHOW-SERVERS' repository location, against real radosgw.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { S3Storage } from '../src/storage/s3/s3-storage.js';
import { Secret } from '../src/util/secret.js';
import { createBartSetup, type BartSetup } from './harness/bart.js';
import { freePort } from './harness/cluster.js';
import { radosgwInstalled, TestS3 } from './harness/s3.js';

const skip = radosgwInstalled() ? false : 'radosgw not installed (scripts/install-deps.sh)';
const BUCKET = 'pgbart-cli';

let s3: TestS3 | undefined;
let setup: BartSetup | undefined;
let serverSectionText = '';

before(async () => {
  if (skip !== false) return;
  s3 = await TestS3.start();
  await s3.createBucket(BUCKET);
  setup = createBartSetup();
  // A database server that is not running: the repository checks do not need it.
  serverSectionText = [
    '[Srv1]',
    'host = 127.0.0.1',
    `port = ${await freePort()}`,
    'user = postgres',
    'cluster_owner = postgres',
  ].join('\n');
});
after(async () => {
  setup?.cleanup();
  await s3?.stop();
});

/** bart.cfg: the harness's [BART] plus repository lines, and the server section. */
function writeConfig(repository: string[], server = serverSectionText): void {
  const text = readFileSync(setup!.configPath, 'utf8').split('\n\n')[0]!.split('\n');
  const bart = text.filter((l) => !/^(repository|s3_)/.test(l));
  setup!.writeConfig(`${[...bart, ...repository].join('\n')}\n\n${server}\n`);
}

function s3Lines(overrides: Record<string, string> = {}): string[] {
  const values: Record<string, string> = {
    repository: 's3',
    s3_endpoint: s3!.httpEndpoint,
    s3_bucket: BUCKET,
    s3_prefix: 'pgbart/prod',
    s3_key: s3!.accessKey,
    s3_key_secret: s3!.secretKey,
    ...overrides,
  };
  return Object.entries(values)
    .filter(([, v]) => v !== '')
    .map(([k, v]) => `${k} = ${v}`);
}

/** The console lines of a bart run (INFO lines on stdout, ERROR lines on stderr). */
const output = (r: { stdout: string; stderr: string }) => `${r.stdout}${r.stderr}`;

test(
  'CHECK-CONFIG with repository = s3: the bucket passes; a wrong secret or a missing bucket is one ERROR line and a non-zero exit',
  { skip },
  async (t) => {
    writeConfig(s3Lines());
    const ok = await setup!.bart(['CHECK-CONFIG']);
    assert.equal(ok.code, 0, output(ok));
    assert.match(
      output(ok),
      /INFO: +repository s3:\/\/pgbart-cli\/pgbart\/prod is reachable and writable: success \(test object of 65536 bytes written, read back and removed\)/,
    );
    // The test object is gone.
    assert.deepEqual(
      (await s3!.bucketEntries(BUCKET)).map((e) => e.name),
      [],
    );

    const cases: Array<{ name: string; lines: string[]; says: RegExp }> = [
      {
        name: 'wrong secret',
        lines: s3Lines({ s3_key_secret: 'a-wrong-secret-key-for-this-user' }),
        says: /refused the request signature \(SignatureDoesNotMatch, HTTP 403\): the secret key is wrong; check s3_key_secret/,
      },
      {
        name: 'missing bucket',
        lines: s3Lines({ s3_bucket: 'no-such-bucket' }),
        says: /bucket "no-such-bucket" does not exist at http:\/\/127\.0\.0\.1:\d+ \(NoSuchBucket\): create it, or correct s3_bucket/,
      },
      {
        name: 'no credentials anywhere',
        lines: s3Lines({ s3_key: '', s3_key_secret: '' }),
        says: /no S3 credentials found: set s3_key and s3_key_secret in bart\.cfg, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY/,
      },
    ];
    for (const c of cases) {
      writeConfig(c.lines);
      // No AWS_* variables and no credentials file for the last case: HOME points at the empty setup directory.
      const r = await setup!.bart(['CHECK-CONFIG'], {
        AWS_ACCESS_KEY_ID: '',
        AWS_SECRET_ACCESS_KEY: '',
        HOME: setup!.dir,
        AWS_EC2_METADATA_DISABLED: 'true',
      });
      assert.notEqual(r.code, 0, `${c.name}: exit status`);
      const errors = r.stderr.split('\n').filter((l) => l.startsWith('ERROR:'));
      t.diagnostic(`${c.name}: ${errors[0]}`);
      assert.match(
        errors[0] ?? '',
        /^ERROR: +repository s3:\/\/.* is reachable and writable: cannot list s3:\/\//,
        c.name,
      );
      assert.match(errors[0] ?? '', c.says, `${c.name}: ${r.stderr}`);
      assert.ok(!output(r).includes(s3!.secretKey), `${c.name}: the secret key was printed`);
      assert.ok(!/^\s+at /m.test(output(r)), `${c.name}: a stack trace:\n${output(r)}`);
    }

    // Credentials from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), none in bart.cfg.
    writeConfig(s3Lines({ s3_key: '', s3_key_secret: '' }));
    const fromEnv = await setup!.bart(['CHECK-CONFIG'], {
      AWS_ACCESS_KEY_ID: s3!.accessKey,
      AWS_SECRET_ACCESS_KEY: s3!.secretKey,
    });
    assert.equal(fromEnv.code, 0, output(fromEnv));
    assert.match(output(fromEnv), /reachable and writable: success/);

    // CHECK-CONFIG -s checks the server's own root (<prefix>/<server>); the server itself is down, so other checks fail.
    writeConfig(s3Lines());
    const server = await setup!.bart(['CHECK-CONFIG', '-s', 'srv1']);
    assert.match(
      output(server),
      /INFO: +repository s3:\/\/pgbart-cli\/pgbart\/prod\/srv1 is reachable and writable: success/,
    );
    assert.notEqual(server.code, 0, 'the database server is not running');
  },
);

test(
  'SHOW-SERVERS with repository = s3: REPOSITORY s3://bucket/prefix/server, usage and archives counted in the bucket',
  { skip },
  async () => {
    writeConfig(s3Lines());
    const storage = new S3Storage({
      bucket: BUCKET,
      root: 'pgbart/prod/srv1',
      endpoint: s3!.httpEndpoint,
      region: s3!.region,
      forcePathStyle: true,
      verifyTls: true,
      credentials: { accessKeyId: new Secret(s3!.accessKey), secretAccessKey: new Secret(s3!.secretKey) },
    });
    try {
      await storage.put('archived_wals/000000010000000000000001', Buffer.alloc(1000));
      await storage.put('archived_wals/000000010000000000000002.gz', Buffer.alloc(500));
      await storage.put('archived_wals/00000002.history', Buffer.alloc(24));
      await storage.put('1764590000000/backupinfo', Buffer.alloc(100));
      const text = await setup!.bart(['SHOW-SERVERS']);
      assert.equal(text.code, 0, output(text));
      const value = (key: string) =>
        text.stdout
          .split('\n')
          .find((l) => l.startsWith(key.padEnd(20)))
          ?.slice(22);
      assert.equal(value('REPOSITORY'), 's3://pgbart-cli/pgbart/prod/srv1');
      assert.equal(value('NUMBER OF ARCHIVES'), '2');
      const json = await setup!.bart(['SHOW-SERVERS', '--output', 'json']);
      assert.equal(json.code, 0, output(json));
      const [report] = JSON.parse(json.stdout) as Array<Record<string, unknown>>;
      assert.equal(report!.repository, 's3');
      assert.equal(report!.repositoryLocation, 's3://pgbart-cli/pgbart/prod/srv1');
      assert.equal(report!.diskUtilizationBytes, 1624);
      assert.equal(report!.numberOfArchives, 2);
      assert.ok(!json.stdout.includes(s3!.secretKey) && !json.stdout.includes(s3!.accessKey));
      await storage.removePrefix('archived_wals');
      await storage.removePrefix('1764590000000');
    } finally {
      await storage.close();
    }
  },
);
