// Concept: the storage driver conformance suite — one set of tests run against PosixStorage and S3Storage (real radosgw), plus S3-only faults.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { PosixStorage } from '../src/storage/posix/posix-storage.js';
import { S3Storage } from '../src/storage/s3/s3-storage.js';
import type { S3StorageOptions } from '../src/storage/s3/s3-client.js';
import {
  StorageError,
  StorageExistsError,
  StorageNotFoundError,
  type RepositoryStorage,
  type StoredObject,
} from '../src/storage/storage.js';
import { Secret } from '../src/util/secret.js';
import { freePort } from './harness/cluster.js';
import { makeTempDir, removeTree } from './harness/os.js';
import { radosgwInstalled, TestS3 } from './harness/s3.js';

const MiB = 1024 * 1024;
const skipS3 = radosgwInstalled() ? false : 'radosgw not installed (scripts/install-deps.sh)';
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function readStream(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function listAll(
  storage: RepositoryStorage,
  prefix: string,
  shallow = false,
): Promise<{ keys: string[]; prefixes: string[]; pages: number; objects: StoredObject[] }> {
  const objects: StoredObject[] = [];
  const prefixes: string[] = [];
  let pages = 0;
  for await (const page of storage.list(prefix, { shallow })) {
    pages++;
    objects.push(...page.objects);
    prefixes.push(...page.prefixes);
  }
  return { keys: objects.map((o) => o.key).sort(), prefixes: prefixes.sort(), pages, objects };
}

/** Runs `fn` over `items`, `limit` at a time. */
async function parallel<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

/** The one radosgw of this file (started once, when installed) and its HTTPS listener. */
let s3: TestS3 | undefined;
let bucketSerial = 0;

/** S3Storage options for the test server: path style, the test user's keys, `bucket`, `root`. */
function s3Options(bucket: string, root: string, extra: Partial<S3StorageOptions> = {}): S3StorageOptions {
  return {
    bucket,
    root,
    endpoint: s3!.httpEndpoint,
    region: s3!.region,
    forcePathStyle: true,
    verifyTls: true,
    credentials: { accessKeyId: new Secret(s3!.accessKey), secretAccessKey: new Secret(s3!.secretKey) },
    ...extra,
  };
}

/** A fresh bucket on the test server. */
async function freshBucket(): Promise<string> {
  const name = `pgbart-test-${++bucketSerial}`;
  await s3!.createBucket(name);
  return name;
}

before(async () => {
  if (skipS3 === false) s3 = await TestS3.start({ tls: true });
});
after(async () => {
  await s3?.stop();
});

/** A storage under test and how to throw it away. */
interface Opened {
  storage: RepositoryStorage;
  cleanup(): Promise<void>;
}

/** How each driver makes a fresh, empty storage. */
const drivers: Array<{ name: string; skip: string | false; open(): Promise<Opened> }> = [
  {
    name: 'posix',
    skip: false,
    async open() {
      const dir = makeTempDir('storage');
      const storage = new PosixStorage(join(dir, 'root'));
      return { storage, cleanup: async () => removeTree(dir) };
    },
  },
  {
    name: 's3',
    skip: skipS3,
    async open() {
      // A fresh bucket per test, the root below a prefix (like <s3_prefix>/<server>); 5 MiB parts (radosgw's minimum) so
      // that a few MiB make a multipart upload.
      const bucket = await freshBucket();
      const storage = new S3Storage(s3Options(bucket, 'pgbart/srv1', { partSize: 5 * MiB }));
      return { storage, cleanup: () => storage.close() };
    },
  },
];

for (const driver of drivers) {
  describe(`storage driver conformance: ${driver.name}`, { skip: driver.skip }, () => {
    const withStorage = (fn: (storage: RepositoryStorage) => Promise<void>) => async () => {
      const { storage, cleanup } = await driver.open();
      try {
        await fn(storage);
      } finally {
        await cleanup();
      }
    };

    test(
      'put, readAll, stat; readAll refuses an object over maxBytes; absent keys',
      withStorage(async (storage) => {
        const data = randomBytes(3000);
        await storage.put('a/b/c', data);
        assert.deepEqual(await storage.readAll('a/b/c', 3000), data);
        const st = await storage.stat('a/b/c');
        assert.equal(st?.key, 'a/b/c');
        assert.equal(st?.size, 3000);
        assert.ok(st!.modified.getTime() > Date.now() - 600_000);
        await assert.rejects(storage.readAll('a/b/c', 2999), (err: Error) => {
          assert.ok(err instanceof StorageError && !(err instanceof StorageNotFoundError));
          assert.match(err.message, /a\/b\/c is 3000 bytes, more than the 2999/);
          return true;
        });
        assert.equal(await storage.stat('a/b/none'), undefined);
        assert.equal(await storage.stat('a/b'), undefined, 'a prefix is not an object');
        await assert.rejects(storage.readAll('a/b/none', 100), StorageNotFoundError);
        await assert.rejects(storage.read('a/b/none'), StorageNotFoundError);
        // Replacing an object (no ifAbsent) takes the new content; an empty object is an object.
        await storage.put('a/b/c', Buffer.from('new'));
        assert.equal((await storage.readAll('a/b/c', 100)).toString(), 'new');
        await storage.put('empty', Buffer.alloc(0));
        assert.equal((await storage.stat('empty'))?.size, 0);
        assert.equal((await storage.readAll('empty', 0)).length, 0);
        await storage.remove('a/b/c');
        await storage.remove('a/b/c'); // absent: not an error
        assert.equal(await storage.stat('a/b/c'), undefined);
      }),
    );

    test(
      'read: whole object and ranges (start, middle, end, empty, past the end)',
      withStorage(async (storage) => {
        const data = randomBytes(100_000);
        await storage.put('r/obj', data);
        assert.deepEqual(await readStream(await storage.read('r/obj')), data);
        const cases: Array<[number, number]> = [
          [0, 10],
          [500, 1500],
          [99_990, 100_000],
          [0, 100_000],
          [70_000, 200_000], // clamped to the end, like a file read
          [5, 5],
          [100_000, 100_010],
        ];
        for (const [start, end] of cases) {
          const got = await readStream(await storage.read('r/obj', { start, end }));
          assert.deepEqual(got, data.subarray(start, Math.min(end, data.length)), `range ${start}-${end}`);
        }
        await assert.rejects(storage.read('r/none', { start: 3, end: 3 }), StorageNotFoundError);
      }),
    );

    test(
      'list: deep and shallow, relative keys, absent prefix',
      withStorage(async (storage) => {
        for (const k of ['x/1', 'x/2', 'x/d/3', 'x/d/e/4', 'y/5', 'xx/6', 'top']) await storage.put(k, Buffer.from(k));
        assert.deepEqual((await listAll(storage, 'x')).keys, ['x/1', 'x/2', 'x/d/3', 'x/d/e/4']);
        const shallow = await listAll(storage, 'x', true);
        assert.deepEqual(shallow.keys, ['x/1', 'x/2']);
        assert.deepEqual(shallow.prefixes, ['d']);
        const top = await listAll(storage, '', true);
        assert.deepEqual(top.keys, ['top']);
        assert.deepEqual(top.prefixes, ['x', 'xx', 'y']);
        assert.deepEqual((await listAll(storage, '')).keys, ['top', 'x/1', 'x/2', 'x/d/3', 'x/d/e/4', 'xx/6', 'y/5']);
        assert.deepEqual((await listAll(storage, 'x/d', true)).prefixes, ['e']);
        const sizes = (await listAll(storage, 'x/d')).objects.map((o) => o.size).sort();
        assert.deepEqual(sizes, [5, 7]);
        assert.deepEqual(await listAll(storage, 'nope'), { keys: [], prefixes: [], pages: 0, objects: [] });
      }),
    );

    test(
      'list: 1001 keys come in more than one page, each key once',
      withStorage(async (storage) => {
        const keys = Array.from({ length: 1001 }, (_, i) => `many/k${String(i).padStart(4, '0')}`);
        await parallel(keys, 16, (k) => storage.put(k, Buffer.from('x'), { durable: false }));
        const listed = await listAll(storage, 'many');
        assert.ok(listed.pages >= 2, `${listed.pages} page(s)`);
        assert.deepEqual(listed.keys, keys);
        const shallow = await listAll(storage, 'many', true);
        assert.equal(shallow.keys.length, 1001);
      }),
    );

    test(
      'create: nothing visible (stat, list) before finish; abort leaves nothing',
      withStorage(async (storage) => {
        const data = randomBytes(2 * MiB);
        const w = await storage.create('v/obj');
        await w.write(data);
        assert.equal(await storage.stat('v/obj'), undefined);
        assert.deepEqual((await listAll(storage, '')).keys, []);
        await w.finish();
        assert.equal((await storage.stat('v/obj'))?.size, data.length);
        assert.deepEqual((await listAll(storage, 'v')).keys, ['v/obj']);

        const aborted = await storage.create('v/aborted');
        await aborted.write(randomBytes(11 * MiB)); // more than two S3 parts: a multipart upload under way
        await aborted.abort();
        await aborted.abort(); // twice: still no error
        assert.equal(await storage.stat('v/aborted'), undefined);
        assert.deepEqual((await listAll(storage, 'v')).keys, ['v/obj']);
        await assert.rejects(aborted.write(Buffer.from('late')), StorageError);
      }),
    );

    test(
      'create ifAbsent: a second create fails with StorageExistsError; of two concurrent ones exactly one wins',
      withStorage(async (storage) => {
        const first = Buffer.from('first segment');
        await storage.put('w/seg', first, { ifAbsent: true });
        await assert.rejects(storage.put('w/seg', Buffer.from('second'), { ifAbsent: true }), StorageExistsError);
        assert.deepEqual(await storage.readAll('w/seg', 100), first);

        for (let round = 0; round < 5; round++) {
          const key = `w/race${round}`;
          const bodies = [randomBytes(256 * 1024), randomBytes(256 * 1024)];
          const writers = await Promise.all(bodies.map(() => storage.create(key, { ifAbsent: true })));
          await Promise.all(writers.map((w, i) => w.write(bodies[i]!)));
          const results = await Promise.allSettled(writers.map((w) => w.finish()));
          const won = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
          assert.equal(won.length, 1, `round ${round}: ${results.map((r) => r.status).join(', ')}`);
          const lost = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
          assert.ok(lost.reason instanceof StorageExistsError, String(lost.reason));
          assert.deepEqual(await storage.readAll(key, MiB), bodies[won[0]!]);
        }
      }),
    );

    test(
      'removePrefix: everything below, not a sibling with the same leading characters; absent prefix; never the root',
      withStorage(async (storage) => {
        for (const k of ['r/1', 'r/d/2', 'r/d/e/3', 'rr/keep', 'r.keep']) await storage.put(k, Buffer.from(k));
        await storage.removePrefix('r');
        assert.deepEqual((await listAll(storage, '')).keys, ['r.keep', 'rr/keep']);
        await storage.removePrefix('absent');
        await assert.rejects(storage.removePrefix(''), /refusing to remove the whole repository root/);
        assert.deepEqual((await listAll(storage, '')).keys, ['r.keep', 'rr/keep']);
      }),
    );

    test(
      'keys: ../x, /abs, a//b, a/./b, trailing slash and empty are refused by every operation',
      withStorage(async (storage) => {
        for (const key of ['../x', '/abs', 'a//b', 'a/./b', 'a/', '']) {
          const refused = (err: Error) => err instanceof StorageError && /refusing storage key/.test(err.message);
          await assert.rejects(storage.put(key, Buffer.from('x')), refused, `put ${key}`);
          await assert.rejects(storage.create(key), refused, `create ${key}`);
          await assert.rejects(storage.stat(key), refused, `stat ${key}`);
          await assert.rejects(storage.read(key), refused, `read ${key}`);
          await assert.rejects(storage.readAll(key, 10), refused, `readAll ${key}`);
          await assert.rejects(storage.remove(key), refused, `remove ${key}`);
          if (key !== '') {
            await assert.rejects(storage.removePrefix(key), refused, `removePrefix ${key}`);
            await assert.rejects(listAll(storage, key), refused, `list ${key}`);
          }
        }
        assert.deepEqual((await listAll(storage, '')).keys, []);
      }),
    );

    test(
      'a multipart object of several parts, written in odd-sized chunks, reads back identical',
      withStorage(async (storage) => {
        const data = randomBytes(17 * MiB + 12345); // four 5 MiB parts on S3
        const w = await storage.create('big/object');
        for (let off = 0; off < data.length; off += 777_777) await w.write(data.subarray(off, off + 777_777));
        await w.finish();
        assert.equal((await storage.stat('big/object'))?.size, data.length);
        assert.equal(sha(await readStream(await storage.read('big/object'))), sha(data));
        const mid = await readStream(await storage.read('big/object', { start: 5 * MiB - 10, end: 10 * MiB + 10 }));
        assert.equal(sha(mid), sha(data.subarray(5 * MiB - 10, 10 * MiB + 10)));
        // One write() of several parts at once, and an object of exactly one S3 part.
        const once = await storage.create('big/at-once');
        await once.write(data);
        await once.finish();
        assert.equal(sha(await readStream(await storage.read('big/at-once'))), sha(data));
        await storage.put('big/one-part', data.subarray(0, 5 * MiB));
        assert.equal(sha(await storage.readAll('big/one-part', 5 * MiB)), sha(data.subarray(0, 5 * MiB)));
      }),
    );
  });
}

// ---------------------------------------------------------------------------------------------
// S3 only

describe(
  'S3Storage against radosgw: multipart leftovers, Content-MD5, memory, faults, errors',
  { skip: skipS3 },
  () => {
    test('removePrefix aborts a multipart upload a killed process left under the prefix', async () => {
      const bucket = await freshBucket();
      const storage = new S3Storage(s3Options(bucket, 'srv', { partSize: 5 * MiB }));
      try {
        // What a process killed during a backup leaves: an upload with parts, never completed nor aborted.
        const { sdk, client } = await storage.connection();
        const up = await client.send(new sdk.CreateMultipartUploadCommand({ Bucket: bucket, Key: 'srv/b1/base.tar' }));
        await client.send(
          new sdk.UploadPartCommand({
            Bucket: bucket,
            Key: 'srv/b1/base.tar',
            UploadId: up.UploadId,
            PartNumber: 1,
            Body: randomBytes(5 * MiB),
          }),
        );
        // And one outside the prefix, which must stay.
        const other = await client.send(new sdk.CreateMultipartUploadCommand({ Bucket: bucket, Key: 'srv/b10/x' }));
        await storage.put('b1/backupinfo', Buffer.from('partial'));
        const uploads = async () =>
          ((await client.send(new sdk.ListMultipartUploadsCommand({ Bucket: bucket }))).Uploads ?? [])
            .map((u) => u.Key)
            .sort();
        assert.deepEqual(await uploads(), ['srv/b1/base.tar', 'srv/b10/x']);
        assert.equal((await listAll(storage, 'b1')).keys.length, 1, 'the unfinished upload is not listed');
        await storage.removePrefix('b1');
        assert.deepEqual(await uploads(), ['srv/b10/x']);
        assert.deepEqual((await listAll(storage, '')).keys, []);
        // radosgw's own index holds nothing of b1 any more (no _multipart_ parts).
        const entries = (await s3!.bucketEntries(bucket)).map((e) => e.name).filter((n) => n.includes('b1/'));
        assert.deepEqual(entries, []);
        await client.send(
          new sdk.AbortMultipartUploadCommand({ Bucket: bucket, Key: 'srv/b10/x', UploadId: other.UploadId }),
        );
      } finally {
        await storage.close();
      }
    });

    test('Content-MD5 goes with every PutObject and UploadPart; a body altered on the way is refused by the store', async () => {
      const bucket = await freshBucket();
      const storage = new S3Storage(s3Options(bucket, 'srv', { partSize: 5 * MiB, maxAttempts: 1 }));
      try {
        const { client } = await storage.connection();
        const seen: Array<{ command: string; md5: string | undefined; md5OfBody: string }> = [];
        let corrupt = false;
        // Runs after serialization (headers set), before signing: what it changes is what goes on the wire.
        client.middlewareStack.add(
          (next, context) => async (args) => {
            const request = args.request as { headers: Record<string, string>; body?: unknown };
            const command = context.commandName ?? '';
            if (command === 'PutObjectCommand' || command === 'UploadPartCommand') {
              const body = request.body as Buffer;
              if (corrupt && body.length > 0) {
                const altered = Buffer.from(body);
                altered[altered.length >> 1]! ^= 0x01;
                request.body = altered;
              }
              const md5OfBody = createHash('md5')
                .update(request.body as Buffer)
                .digest('base64');
              seen.push({ command, md5: request.headers['content-md5'], md5OfBody });
            }
            return next(args);
          },
          { step: 'build', name: 'pgbartTestBodyTap' },
        );
        await storage.put('small', randomBytes(1000));
        const w = await storage.create('multi');
        await w.write(randomBytes(11 * MiB));
        await w.finish();
        assert.deepEqual(
          seen.map((s) => s.command),
          ['PutObjectCommand', 'UploadPartCommand', 'UploadPartCommand', 'UploadPartCommand'],
        );
        for (const s of seen) assert.equal(s.md5, s.md5OfBody, `${s.command} carries the body's MD5`);

        corrupt = true;
        await assert.rejects(storage.put('altered', randomBytes(1000)), (err: Error) => {
          assert.ok(err instanceof StorageError);
          assert.match(
            err.message,
            /cannot write s3:\/\/pgbart-test-\d+\/srv\/altered: .*BadDigest: Content-MD5 mismatch/,
          );
          return true;
        });
        const w2 = await storage.create('altered-multi');
        await assert.rejects(
          (async () => {
            await w2.write(randomBytes(11 * MiB));
            await w2.finish();
          })(),
          /BadDigest/,
        );
        await w2.abort();
        corrupt = false;
        assert.equal(await storage.stat('altered'), undefined);
        assert.equal(await storage.stat('altered-multi'), undefined);
      } finally {
        await storage.close();
      }
    });

    test('memory stays bounded writing 200 MiB through one writer (default 16 MiB parts, 4 in flight)', async (t) => {
      const bucket = await freshBucket();
      const storage = new S3Storage(s3Options(bucket, 'srv'));
      try {
        await storage.connection();
        global.gc?.();
        const base = process.memoryUsage().rss;
        let peak = base;
        const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
        const chunk = randomBytes(MiB);
        const hash = createHash('sha256');
        const t0 = Date.now();
        const w = await storage.create('big');
        for (let i = 0; i < 200; i++) {
          chunk.writeUInt32LE(i, 0); // every MiB differs
          hash.update(chunk);
          await w.write(chunk);
          peak = Math.max(peak, process.memoryUsage().rss);
        }
        await w.finish();
        clearInterval(sampler);
        const seconds = (Date.now() - t0) / 1000;
        const delta = Math.round((peak - base) / MiB);
        t.diagnostic(
          `200 MiB written in ${seconds.toFixed(1)} s (${Math.round(200 / seconds)} MiB/s); peak RSS +${delta} MiB`,
        );
        // 5 part buffers of 16 MiB plus copies in flight and sockets: well under the 200 MiB written.
        assert.ok(delta < 180, `peak RSS grew by ${delta} MiB`);
        const back = createHash('sha256');
        let size = 0;
        for await (const c of await storage.read('big')) {
          back.update(c as Buffer);
          size += (c as Buffer).length;
        }
        assert.equal(size, 200 * MiB);
        assert.equal(back.digest('hex'), hash.digest('hex'));
        await storage.removePrefix('big');
      } finally {
        await storage.close();
      }
    });

    test('radosgw killed during an upload: the writer fails with one clear line; nothing visible after restart', async () => {
      const bucket = await freshBucket();
      const storage = new S3Storage(s3Options(bucket, 'srv', { partSize: 5 * MiB, maxAttempts: 3 }));
      try {
        const w = await storage.create('b1/base.tar');
        await w.write(randomBytes(12 * MiB)); // two parts started
        await s3!.kill();
        const failed = await (async () => {
          try {
            for (let i = 0; i < 4; i++) await w.write(randomBytes(5 * MiB));
            await w.finish();
          } catch (err) {
            return err;
          }
          return undefined;
        })();
        await w.abort();
        assert.ok(failed instanceof StorageError, `expected a StorageError, got ${String(failed)}`);
        assert.match(failed.message, /^cannot write s3:\/\/pgbart-test-\d+\/srv\/b1\/base\.tar: /);
        assert.match(failed.message, /refused the connection|connection to .* was cut/);
        assert.ok(!failed.message.includes('\n'), failed.message);
        // A read while it is down fails the same way.
        await assert.rejects(storage.stat('b1/base.tar'), /refused the connection|was cut/);
        await s3!.restart();
        assert.equal(await storage.stat('b1/base.tar'), undefined);
        assert.deepEqual((await listAll(storage, '')).keys, []);
        // The upload abort() could not reach is cleaned up by removePrefix (MANAGE -d's job).
        await storage.removePrefix('b1');
        const { sdk, client } = await storage.connection();
        const left = await client.send(new sdk.ListMultipartUploadsCommand({ Bucket: bucket }));
        assert.deepEqual(left.Uploads ?? [], []);
        // And the next run works.
        await storage.put('b1/base.tar', Buffer.from('ok'));
        assert.equal((await storage.readAll('b1/base.tar', 10)).toString(), 'ok');
      } catch (err) {
        await s3!.restart(); // up again for the tests after this one
        throw err;
      } finally {
        await storage.close();
      }
    });

    test('a read cut half way (radosgw killed) errors the stream with a StorageError, never a short success', async () => {
      const bucket = await freshBucket();
      const storage = new S3Storage(s3Options(bucket, 'srv', { maxAttempts: 2 }));
      try {
        const size = 64 * MiB;
        const w = await storage.create('big');
        for (let i = 0; i < size / MiB; i++) await w.write(randomBytes(MiB));
        await w.finish();
        const stream = await storage.read('big');
        let received = 0;
        const outcome = await (async () => {
          try {
            for await (const c of stream) {
              received += (c as Buffer).length;
              if (received >= MiB && received - (c as Buffer).length < MiB) await s3!.kill();
            }
            return 'ended';
          } catch (err) {
            return err;
          }
        })();
        assert.ok(received < size, `all ${received} bytes arrived before the kill took effect`);
        assert.ok(outcome instanceof StorageError, `the stream ${String(outcome)} after ${received} of ${size} bytes`);
        assert.match(outcome.message, /^cannot read s3:\/\/pgbart-test-\d+\/srv\/big: /);
        assert.ok(!outcome.message.includes('\n'), outcome.message);
        // readAll too: fails, never returns a short buffer.
        await s3!.restart();
        // (Cut before or during the body, depending on timing: either way an error.)
        const reading = storage.readAll('big', size).then(
          (b) => `a buffer of ${b.length} bytes`,
          (err: unknown) => err,
        );
        await new Promise((r) => setTimeout(r, 100));
        await s3!.kill();
        const read = await reading;
        assert.ok(read instanceof StorageError, String(read));
        await s3!.restart();
        assert.equal((await storage.readAll('big', size)).length, size);
        await storage.removePrefix('big');
      } catch (err) {
        await s3!.restart(); // up again for the tests after this one
        throw err;
      } finally {
        await storage.close();
      }
    });

    test('create-if-absent objects are one conditional PUT: larger than 1 GiB is refused up front', async () => {
      const bucket = await freshBucket();
      const storage = new S3Storage(s3Options(bucket, 'srv'));
      try {
        await assert.rejects(
          storage.create('archived_wals/huge', { ifAbsent: true, sizeHint: 2 * 1024 * MiB }),
          /a create-if-absent object \(archived WAL\) is limited to 1073741824 bytes on S3, this one is 2147483648/,
        );
      } finally {
        await storage.close();
      }
    });

    test('a clock off by an hour: one attempt says so (RequestTimeTooSkewed); with retries the SDK corrects its offset', async () => {
      const bucket = await freshBucket();
      const realNow = Date.now;
      Date.now = () => realNow() + 3600_000;
      const once = new S3Storage(s3Options(bucket, 'srv', { maxAttempts: 1 }));
      const retrying = new S3Storage(s3Options(bucket, 'srv'));
      try {
        await assert.rejects(
          once.put('x', Buffer.from('x')),
          /this host's clock differs too much from the store's \(RequestTimeTooSkewed\): set the clock right \(NTP\)/,
        );
        await retrying.put('x', Buffer.from('x'));
      } finally {
        Date.now = realNow;
        await once.close();
        await retrying.close();
      }
    });

    test('wrong credentials, a missing bucket, an unreachable or unresolvable endpoint, TLS: one line each, no secret', async (t) => {
      const bucket = await freshBucket();
      // A TCP server that takes connections and says nothing.
      const sockets = new Set<Socket>();
      const silent = createServer((socket) => sockets.add(socket));
      await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
      const silentPort = (silent.address() as AddressInfo).port;
      t.after(() => {
        for (const s of sockets) s.destroy();
        silent.close();
      });
      const cases: Array<{ name: string; options: S3StorageOptions; says: RegExp }> = [
        {
          name: 'wrong secret',
          options: s3Options(bucket, 'srv', {
            credentials: {
              accessKeyId: new Secret(s3!.accessKey),
              secretAccessKey: new Secret('wrong-secret-key-0123'),
            },
          }),
          says: /SignatureDoesNotMatch, HTTP 403\): the secret key is wrong; check s3_key_secret/,
        },
        {
          name: 'unknown access key',
          options: s3Options(bucket, 'srv', {
            credentials: { accessKeyId: new Secret('NOSUCHKEY0123456789'), secretAccessKey: new Secret(s3!.secretKey) },
          }),
          says: /does not know the access key \(InvalidAccessKeyId, HTTP 403\): check s3_key/,
        },
        {
          name: 'missing bucket',
          options: s3Options('no-such-bucket', 'srv'),
          says: /bucket "no-such-bucket" does not exist at http:\/\/127\.0\.0\.1:\d+ \(NoSuchBucket\)/,
        },
        {
          name: 'nothing listening',
          options: s3Options(bucket, 'srv', { endpoint: `http://127.0.0.1:${await freePort()}`, maxAttempts: 2 }),
          says: /http:\/\/127\.0\.0\.1:\d+ refused the connection \(after 2 attempts\): check that the store is running/,
        },
        {
          name: 'a store that accepts the connection and never answers',
          options: s3Options(bucket, 'srv', {
            endpoint: `http://127.0.0.1:${silentPort}`,
            maxAttempts: 2,
            socketTimeoutMs: 500,
          }),
          says: /http:\/\/127\.0\.0\.1:\d+ did not answer in time \(timeout \(after 2 attempts\)\): check the network path/,
        },
        {
          name: 'unresolvable host',
          options: s3Options(bucket, 'srv', { endpoint: 'http://pgbart-no-such-host.invalid:7480', maxAttempts: 1 }),
          says: /cannot resolve the host name of http:\/\/pgbart-no-such-host\.invalid:7480 \(DNS lookup failed\)/,
        },
        {
          name: 'self-signed certificate',
          options: s3Options(bucket, 'srv', { endpoint: s3!.endpoint, maxAttempts: 1 }),
          says: /the TLS certificate of https:\/\/127\.0\.0\.1:\d+ is not trusted \(DEPTH_ZERO_SELF_SIGNED_CERT.*set s3_ca_file/,
        },
        {
          name: 'https to a plain HTTP port',
          options: s3Options(bucket, 'srv', { endpoint: s3!.httpEndpoint.replace('http:', 'https:'), maxAttempts: 1 }),
          says: /TLS handshake with https:\/\/127\.0\.0\.1:\d+ failed .*use http:\/\//,
        },
        {
          name: 'unreadable CA file',
          options: s3Options(bucket, 'srv', { endpoint: s3!.endpoint, caFile: '/nonexistent/ca.pem' }),
          says: /cannot read s3_ca_file "\/nonexistent\/ca\.pem" \(ENOENT\)/,
        },
      ];
      for (const c of cases) {
        const storage = new S3Storage(c.options);
        try {
          for (const op of [() => listAll(storage, ''), () => storage.put('probe', Buffer.from('x'))]) {
            await assert.rejects(op(), (err: Error) => {
              assert.ok(err instanceof StorageError, `${c.name}: ${String(err)}`);
              assert.match(err.message, c.says, c.name);
              assert.ok(!err.message.includes('\n'), `${c.name}: ${err.message}`);
              for (const secret of [s3!.secretKey, s3!.accessKey])
                assert.ok(!err.message.includes(secret), `${c.name}: a credential in ${err.message}`);
              return true;
            });
          }
        } finally {
          await storage.close();
        }
      }
      // The same HTTPS endpoint works with the CA file, and with verification off.
      for (const extra of [{ caFile: s3!.certFile! }, { verifyTls: false }]) {
        const storage = new S3Storage(s3Options(bucket, 'srv', { endpoint: s3!.endpoint, ...extra }));
        try {
          await storage.put('tls', Buffer.from('over tls'));
          assert.equal((await storage.readAll('tls', 100)).toString(), 'over tls');
        } finally {
          await storage.close();
        }
      }
    });
  },
);
