// Concept: the end-to-end run with repository_cipher = aes-256-gcm, on POSIX and on S3 (real radosgw) — backups, archiving through INIT's archive_command and RESTORE's restore_command, VERIFY-CHKSUM, PITR RESTORE, MANAGE -d, DELETE, and every way the encrypted repository must refuse.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfig } from '../src/config/parse-config.js';
import { openRepositoryDriver, openWalArchiveDriver } from '../src/storage/open-repository.js';
import type { RepositoryStorage } from '../src/storage/storage.js';
import { createBartSetup, serverSection, type BartSetup } from './harness/bart.js';
import { TestCluster } from './harness/cluster.js';
import { pgbenchInit, pgbenchRun, tableFingerprints } from './harness/load.js';
import { removeTree, testUserIds, type RunResult } from './harness/os.js';
import { versionsUnderTest } from './harness/pg-binaries.js';
import { radosgwInstalled, TestS3 } from './harness/s3.js';
import { restoreToTimeAndCompare } from './harness/pitr-check.js';
import { waitFor } from './harness/wait.js';
import { e2eOnly } from './harness/test-size.js';

const version = versionsUnderTest()[0]!;
const SERVER = 'enc';
const BUCKET = 'pgbart-encrypted';
const SEGMENT_RE = /^[0-9A-F]{24}$/;
const CHUNK = 1 << 20; // the repository's chunk size (chunkLog2 = 20, docs/catalog-format.md)
const TAG = 16;
const HEADER = 32;
const noS3 =
  (radosgwInstalled() ? false : 'radosgw, ceph-mon and ceph-osd are not installed (scripts/install-deps.sh)') ||
  // The same steps as on posix below, through the same cipher layer; S3 itself is covered by the s3-* files.
  e2eOnly('npm test runs these steps on posix; the cipher over S3 in cipher-storage');

let s3: TestS3 | undefined;
before(async () => {
  if (noS3 !== false) return;
  s3 = await TestS3.start();
  await s3.createBucket(BUCKET);
});
after(async () => {
  await s3?.stop();
});

/** The backup identifier BACKUP printed. */
function backupId(r: RunResult): string {
  const m = /backup identifier: '(\d+)'/.exec(r.stdout);
  assert.ok(r.code === 0 && m, `BACKUP failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
  return m[1]!;
}

/** Every key below a storage root. */
async function keys(storage: RepositoryStorage, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for await (const page of storage.list(prefix)) for (const o of page.objects) out.push(o.key);
  return out.sort();
}

/** Every regular file below `dir`. */
function filesBelow(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out.push(p);
    }
  };
  walk(dir);
  return out;
}

/** Runs `fn` while sampling every process's command line (ps) every 50 ms; returns fn's result and the samples. */
async function withPsSamples<T>(fn: () => Promise<T>): Promise<{ result: T; samples: string[] }> {
  const samples: string[] = [];
  let running = true;
  const sampler = (async () => {
    while (running) {
      samples.push(
        await new Promise<string>((resolve) => {
          const ps = spawn('ps', ['-eww', '-o', 'pid=,args='], { stdio: ['ignore', 'pipe', 'ignore'] });
          let out = '';
          ps.stdout.on('data', (d: Buffer) => (out += d.toString()));
          ps.on('close', () => resolve(out));
        }),
      );
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  try {
    return { result: await fn(), samples };
  } finally {
    running = false;
    await sampler;
  }
}

for (const kind of ['posix', 's3'] as const) {
  describe(
    `encrypted repository (aes-256-gcm) on ${kind}, PostgreSQL ${version}`,
    { concurrency: false, skip: kind === 's3' ? noS3 : false },
    () => {
      const passphrase = `pass-${randomBytes(18).toString('base64url')}`;
      const prefix = `encrypted-${Date.now()}`;
      let cluster: TestCluster;
      let setup: BartSetup;
      let passFile: string;
      let repo: RepositoryStorage; // the driver below the cipher: stored (encrypted) bytes
      let wal: RepositoryStorage;
      let config = '';
      const restoredDirs: string[] = [];
      let fullId = '';
      let incrId = '';
      let plainId = '';
      let target = '';
      let atTarget: Record<string, string> = {};

      /** Where the tests name a stored object: `s3://bucket/prefix/enc/KEY` or `backup_path/enc/KEY`. */
      const objectName = (key: string) =>
        kind === 's3' ? `s3://${BUCKET}/${prefix}/${SERVER}/${key}` : join(setup.backupPath, SERVER, key);

      /**
       * On POSIX the test (root) rewrote the file: give it back to the BART user, as bart would have written it (else
       * bart, which runs as that user, meets EACCES instead of the damage under test).
       */
      const giveBack = (storage: RepositoryStorage, key: string) => {
        const ids = testUserIds();
        if (kind === 'posix' && ids)
          chownSync(join(setup.backupPath, SERVER, storage === wal ? 'archived_wals' : '', key), ids.uid, ids.gid);
      };

      /** Flips one byte of a stored object (or replaces it), runs `fn`, and always puts the original back. */
      async function altered(
        storage: RepositoryStorage,
        key: string,
        change: (b: Buffer) => Buffer,
        fn: () => Promise<void>,
      ): Promise<void> {
        const original = await storage.readAll(key, 1 << 30);
        await storage.remove(key);
        await storage.put(key, change(Buffer.from(original)));
        giveBack(storage, key);
        try {
          await fn();
        } finally {
          await storage.remove(key);
          await storage.put(key, original);
          giveBack(storage, key);
        }
      }
      const flip = (b: Buffer) => {
        b[HEADER + Math.floor((b.length - HEADER) / 3)]! ^= 0x01;
        return b;
      };

      before(async () => {
        cluster = await TestCluster.create({ version, conf: { archive_mode: 'on' } });
        const s3Lines: Record<string, string> =
          kind === 's3'
            ? {
                repository: 's3',
                s3_endpoint: s3!.httpEndpoint,
                s3_region: s3!.region,
                s3_bucket: BUCKET,
                s3_prefix: prefix,
                s3_uri_style: 'path',
                s3_key: s3!.accessKey,
                s3_key_secret: s3!.secretKey,
              }
            : {};
        setup = createBartSetup(s3Lines);
        passFile = join(setup.dir, 'cipher.pass');
        writeFileSync(passFile, `${passphrase}\n`, { mode: 0o600 });
        const ids = testUserIds();
        if (ids) chownSync(passFile, ids.uid, ids.gid);
        config =
          readFileSync(setup.configPath, 'utf8').replace(
            '[BART]\n',
            `[BART]\nrepository_cipher = aes-256-gcm\nrepository_cipher_pass_file = ${passFile}\n`,
          ) +
          '\n' +
          serverSection(cluster, SERVER, {
            allow_incremental_backups: 'enabled',
            mbm_scan_timeout: '5',
            retention_policy: '1 BACKUPS',
          });
        setup.writeConfig(config);
        const parsed = loadConfig(setup.configPath);
        const server = parsed.servers.find((s) => s.name === SERVER)!;
        repo = openRepositoryDriver(parsed, server);
        wal = openWalArchiveDriver(server);
      });
      after(async () => {
        await repo?.close();
        await wal?.close();
        await cluster?.destroy();
        setup?.cleanup();
        for (const d of restoredDirs) removeTree(d);
      });

      test('INIT, archiving through ARCHIVE-PUSH, a full backup (passphrase never in ps), a wrong passphrase fails at once', async () => {
        const init = await setup.bart(['INIT', '-s', SERVER]);
        assert.equal(init.code, 0, init.stderr);
        assert.match(String(await cluster.scalar('SHOW archive_command')), /ARCHIVE-PUSH -s enc %p$/);
        await pgbenchInit(cluster, 1);
        const first = await cluster.switchWal();
        await waitFor(`${first} archived`, async () => (await keys(wal)).includes(first), {
          timeoutMs: 60_000,
          intervalMs: 250,
        });
        assert.ok((await keys(wal)).includes('pgbart.cipher'), 'the WAL archive holds its key object');
        const stored = await wal.readAll(first, 1 << 26);
        assert.equal(stored.subarray(0, 8).toString(), 'PGBARTC1', 'the archived segment is stored encrypted');
        assert.equal(stored.length, HEADER + 16 * CHUNK + 16 * TAG);

        const load = pgbenchRun(cluster, 4, 2);
        const { result, samples } = await withPsSamples(() =>
          setup.bart(['BACKUP', '-s', SERVER, '-F', 't', '--compress', 'lz4', '--thread-count', '2']),
        );
        await load;
        fullId = backupId(result);
        assert.ok(samples.length >= 3, `ps sampled ${samples.length} times during the backup`);
        assert.ok(
          samples.some((s) => s.includes('BACKUP -s enc')),
          'the samples saw the backup running',
        );
        assert.ok(!samples.some((s) => s.includes(passphrase)), 'the passphrase is never in ps output');
        const tar = await repo.readAll(`${fullId}/base.tar.lz4`, 1 << 30);
        assert.equal(tar.subarray(0, 8).toString(), 'PGBARTC1');

        writeFileSync(passFile, 'not-the-passphrase\n');
        try {
          const t0 = Date.now();
          const wrong = await setup.bart(['BACKUP', '-s', SERVER, '-F', 't']);
          const elapsed = Date.now() - t0;
          assert.notEqual(wrong.code, 0, wrong.stdout);
          assert.match(wrong.stderr, /wrong passphrase for the encrypted repository/);
          assert.equal(wrong.stderr.trim().split('\n').length, 1, wrong.stderr);
          assert.ok(elapsed < 15_000, `refused in ${elapsed} ms, before any long work`);
          const get = await setup.bart(['ARCHIVE-GET', '-s', SERVER, first, join(setup.dir, 'X')]);
          assert.notEqual(get.code, 0);
          assert.match(get.stdout + get.stderr, /wrong passphrase/);
          assert.ok(!existsSync(join(setup.dir, 'X')));
        } finally {
          writeFileSync(passFile, `${passphrase}\n`);
        }
      });

      test('an incremental on top, then a PITR target; VERIFY-CHKSUM of both', async () => {
        await pgbenchRun(cluster, 2, 2);
        await cluster.query(
          'CREATE TABLE between_backups AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g',
        );
        const incr = await setup.bart([
          '-d',
          'BACKUP',
          '-s',
          SERVER,
          '--parent',
          fullId,
          '-F',
          't',
          '--compress',
          'lz4',
        ]);
        incrId = backupId(incr);
        // The derivation the CLI starts while the command loads (prewarmKeysOf: the catalog's key object exists by
        // now) is the one the command uses: one scrypt, not two.
        const derivations = (incr.stdout + incr.stderr).match(/derived a repository master key/g) ?? [];
        assert.equal(derivations.length, 1, `one scrypt per command:\n${incr.stderr}`);
        await cluster.query('CREATE TABLE before_target AS SELECT g AS id FROM generate_series(1, 5000) g');
        atTarget = await tableFingerprints(cluster);
        await new Promise((r) => setTimeout(r, 1100));
        target = String(await cluster.scalar("SELECT to_char(clock_timestamp(), 'YYYY-MM-DD HH24:MI:SS.USOF')"));
        await new Promise((r) => setTimeout(r, 1100));
        await cluster.query('CREATE TABLE after_target AS SELECT g AS id FROM generate_series(1, 100) g');
        const last = await cluster.switchWal();
        await waitFor(`${last} archived`, async () => (await keys(wal)).includes(last), {
          timeoutMs: 60_000,
          intervalMs: 250,
        });
        const verify = await setup.bart(['VERIFY-CHKSUM', '-s', SERVER, '-i', 'all']);
        assert.equal(verify.code, 0, `${verify.stdout}\n${verify.stderr}`);
        for (const id of [fullId, incrId]) assert.match(verify.stdout, new RegExp(`${id}\\s+OK`), verify.stdout);
      });

      test('PITR RESTORE of the chain: restore_command is ARCHIVE-GET, which decrypts; started, data as at the target', async () => {
        const path = join(setup.dir, 'restored');
        restoredDirs.push(path);
        await restoreToTimeAndCompare({
          setup,
          version,
          server: SERVER,
          backupId: incrId,
          path,
          target,
          expected: atTarget,
        });
      });

      test('one byte flipped in a stored unit, in a backupinfo, in an archived WAL file; a WAL file cut at a chunk boundary: refused, naming the object', async () => {
        const unit = `${incrId}/base.tar.lz4`;
        await altered(repo, unit, flip, async () => {
          const v = await setup.bart(['VERIFY-CHKSUM', '-s', SERVER, '-i', incrId]);
          assert.notEqual(v.code, 0, v.stdout);
          assert.match(v.stdout, /FAILED/);
          assert.ok(v.stderr.includes(objectName(unit)) || v.stderr.includes('base.tar.lz4'), v.stderr);
          const path = join(setup.dir, 'refused-unit');
          const r = await setup.bart(['RESTORE', '-s', SERVER, '-i', incrId, '-p', path]);
          assert.notEqual(r.code, 0, r.stdout);
          assert.ok(r.stderr.includes(objectName(unit)), r.stderr);
          assert.ok(!/^\s+at /m.test(r.stderr), r.stderr);
          assert.ok(!existsSync(path));
        });

        const info = (await keys(repo, fullId)).find((k) => /backupinfo/.test(k))!;
        assert.ok(info, `a backupinfo among ${(await keys(repo, fullId)).join(' ')}`);
        await altered(repo, info, flip, async () => {
          const v = await setup.bart(['VERIFY-CHKSUM', '-s', SERVER, '-i', fullId]);
          assert.notEqual(v.code, 0, v.stdout);
          assert.ok((v.stdout + v.stderr).includes(objectName(info)), `${v.stdout}\n${v.stderr}`);
          const path = join(setup.dir, 'refused-info');
          const r = await setup.bart(['RESTORE', '-s', SERVER, '-i', fullId, '-p', path]);
          assert.notEqual(r.code, 0, r.stdout);
          assert.ok((r.stdout + r.stderr).includes(objectName(info)), `${r.stdout}\n${r.stderr}`);
          assert.ok(!existsSync(path));
        });

        const segment = (await keys(wal)).find((k) => SEGMENT_RE.test(k))!;
        const walName =
          kind === 's3'
            ? `s3://${BUCKET}/${prefix}/${SERVER}/archived_wals/${segment}`
            : join(setup.backupPath, SERVER, 'archived_wals', segment);
        const dest = join(setup.dir, 'RECOVERYXLOG');
        for (const [what, change] of [
          ['flipped', flip],
          ['cut at a chunk boundary', (b: Buffer) => b.subarray(0, HEADER + 8 * (CHUNK + TAG))],
        ] as const) {
          await altered(wal, segment, change, async () => {
            const g = await setup.bart(['ARCHIVE-GET', '-s', SERVER, segment, dest]);
            assert.notEqual(g.code, 0, `${what}: ${g.stdout}`);
            assert.ok((g.stdout + g.stderr).includes(walName), `${what}: ${g.stdout}\n${g.stderr}`);
            assert.ok(!existsSync(dest), `${what}: nothing written to %p`);
          });
        }
        const ok = await setup.bart(['ARCHIVE-GET', '-s', SERVER, segment, dest]);
        assert.equal(ok.code, 0, ok.stderr);
        assert.equal(statSync(dest).size, 16 * CHUNK);
      });

      test('BACKUP -F p says it is not startable in place; changing repository_cipher on the non-empty repository is refused', async () => {
        const r = await setup.bart(['BACKUP', '-s', SERVER, '-F', 'p']);
        plainId = backupId(r);
        assert.match(r.stdout + r.stderr, /not startable in place; restore it with bart RESTORE/);

        setup.writeConfig(config.replace('repository_cipher = aes-256-gcm', 'repository_cipher = none'));
        try {
          const s = await setup.bart(['SHOW-BACKUPS', '-s', SERVER]);
          assert.notEqual(s.code, 0, s.stdout);
          assert.match(
            s.stderr,
            /is encrypted, but repository_cipher is none for this server: set repository_cipher = aes-256-gcm/,
          );
        } finally {
          setup.writeConfig(config);
        }
      });

      test('MANAGE -d with retention_policy = 1 BACKUPS removes the obsolete chain; DELETE removes the last backup', async () => {
        assert.equal((await setup.bart(['MANAGE', '-s', SERVER])).code, 0);
        const d = await setup.bart(['MANAGE', '-s', SERVER, '-d']);
        assert.equal(d.code, 0, `${d.stdout}\n${d.stderr}`);
        const left = await keys(repo);
        assert.ok(!left.some((k) => k.startsWith(`${fullId}/`) || k.startsWith(`${incrId}/`)), left.join(' '));
        assert.ok(
          left.some((k) => k.startsWith(`${plainId}/`)),
          left.join(' '),
        );
        const del = await setup.bart(['DELETE', '-s', SERVER, '-i', plainId]);
        assert.equal(del.code, 0, `${del.stdout}\n${del.stderr}`);
        assert.ok(!(await keys(repo)).some((k) => k.startsWith(`${plainId}/`)));
      });

      test('the passphrase is in no file the test leaves behind (catalog, logs, clusters, restored data, bucket)', async () => {
        const files = [...filesBelow(setup.dir), ...filesBelow(cluster.baseDir)].filter((f) => f !== passFile);
        assert.ok(
          files.some((f) => f === setup.logfile),
          'bart.log is among the files searched',
        );
        const needle = Buffer.from(passphrase);
        for (const f of files) {
          let content: Buffer;
          try {
            content = readFileSync(f);
          } catch (err) {
            // The cluster still runs: a file it removes meanwhile (pg_internal.init, a recycled segment) is gone.
            if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
            throw err;
          }
          assert.ok(!content.includes(needle), `the passphrase is in ${f}`);
        }
        if (kind === 's3') {
          let objects = 0;
          for (const store of [repo, wal])
            for (const k of await keys(store)) {
              objects++;
              assert.ok(!(await store.readAll(k, 1 << 26)).includes(needle), `the passphrase is in object ${k}`);
            }
          assert.ok(objects > 0);
        }
      });
    },
  );
}

test('repository_cipher = aes-256-gcm on a non-empty unencrypted repository is refused with what to do', async () => {
  const setup = createBartSetup();
  try {
    const cluster = await TestCluster.create({ version, conf: { archive_mode: 'on' } });
    try {
      const section = serverSection(cluster, 'plainrepo');
      setup.writeConfig(`${readFileSync(setup.configPath, 'utf8')}\n${section}`);
      assert.equal((await setup.bart(['INIT', '-s', 'plainrepo'])).code, 0);
      await waitFor(
        'a segment archived',
        async () => {
          await cluster.switchWal();
          return readdirSync(join(setup.backupPath, 'plainrepo', 'archived_wals')).some((n) => SEGMENT_RE.test(n));
        },
        { timeoutMs: 60_000, intervalMs: 500 },
      );
      const config = readFileSync(setup.configPath, 'utf8');
      setup.writeConfig(config.replace('[BART]\n', '[BART]\nrepository_cipher = aes-256-gcm\n'));
      const r = await setup.bart(['BACKUP', '-s', 'plainrepo'], { BART_CIPHER_PASS: 'some passphrase' });
      assert.notEqual(r.code, 0, r.stdout);
      assert.match(r.stderr, /holds unencrypted data .*point the server at a new, empty repository/);
      assert.ok(!r.stderr.includes('some passphrase'));
    } finally {
      await cluster.destroy();
    }
  } finally {
    setup.cleanup();
  }
});
