// Tests of the encrypting storage (CipherStorage) over the real POSIX driver: round trips, ranged reads, and
// every kind of tampering (flipped byte, truncation at and inside a chunk, a moved object, a wrong passphrase).

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
  copyFileSync,
  mkdirSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { PosixStorage } from '../src/storage/posix/posix-storage.js';
import { CipherStorage, openWorkerSource } from '../src/storage/encryption/cipher-storage.js';
import {
  CIPHER_KEY_OBJECT,
  keyDerivationCount,
  repositoryIsEncrypted,
  type CipherSettings,
} from '../src/storage/encryption/cipher-key.js';
import { HEADER_BYTES, TAG_BYTES } from '../src/storage/encryption/cipher-format.js';
import { readPassphrase } from '../src/storage/encryption/passphrase.js';
import { PlainRepositoryGuard } from '../src/storage/encryption/plain-guard.js';
import { StorageError, StorageNotFoundError, type RepositoryStorage } from '../src/storage/storage.js';
import { BartError } from '../src/util/errors.js';
import type { Readable } from 'node:stream';

const PASS = 'correct horse battery staple ' + randomBytes(6).toString('hex');
/** 4 KiB chunks: many chunks in small objects. */
const CHUNK = 4096;
const settings = (pass = PASS): CipherSettings => ({
  cipher: 'aes-256-gcm',
  passphrase: async () => pass,
  chunkLog2: 12,
});

/**
 * The POSIX driver seen through a plain object, not a PosixStorage: CipherStorage then reads through the driver's
 * streams (as it does S3's) instead of its own POSIX reads. Both read paths are tested.
 */
function streamed(inner: PosixStorage): RepositoryStorage {
  return {
    kind: inner.kind,
    location: inner.location,
    list: (p, o) => inner.list(p, o),
    stat: (k) => inner.stat(k),
    read: (k, r) => inner.read(k, r),
    readAll: (k, m) => inner.readAll(k, m),
    create: (k, o) => inner.create(k, o),
    put: (k, d, o) => inner.put(k, d, o),
    remove: (k) => inner.remove(k),
    removePrefix: (p) => inner.removePrefix(p),
    syncPrefix: (p) => inner.syncPrefix(p),
    localPath: (k) => inner.localPath(k),
    close: () => inner.close(),
  };
}
const readers = (dir: string) => [
  new CipherStorage(new PosixStorage(dir), settings()),
  new CipherStorage(streamed(new PosixStorage(dir)), settings()),
];

async function collect(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const p of stream) parts.push(p as Buffer);
  return Buffer.concat(parts);
}

describe('encrypted repository storage', () => {
  let root: string;
  before(() => {
    root = mkdtempSync(join(tmpdir(), 'pgbart-cipher-'));
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  const fresh = (name: string) => {
    const dir = join(root, name);
    return { dir, inner: new PosixStorage(dir), storage: new CipherStorage(new PosixStorage(dir), settings()) };
  };

  test('round trips of every size around the chunk size, ranged reads anywhere, sizes in listings', async () => {
    const { dir, storage } = fresh('roundtrip');
    const sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17];
    for (const size of sizes) {
      const data = randomBytes(size);
      const key = `1700000000000/file-${size}`;
      const w = await storage.create(key);
      // Written in odd pieces so chunk boundaries fall inside writes.
      for (let at = 0; at < size; at += 1000) await w.write(data.subarray(at, Math.min(size, at + 1000)));
      await w.finish();
      assert.deepEqual(await collect(await storage.read(key)), data, `whole object of ${size} bytes`);
      assert.deepEqual(await storage.readAll(key, size), data);
      assert.equal((await storage.stat(key))?.size, size, 'stat shows the plaintext size');
      const stored = statSync(join(dir, key)).size;
      assert.ok(stored > size + HEADER_BYTES, 'stored bigger than plaintext (header and tags)');
      assert.ok(
        // Only a needle of 16+ bytes means anything: 1 random byte is found in ~17% of 50-byte files by chance.
        size < 16 || !readFileSync(join(dir, key)).includes(data.subarray(0, Math.min(size, 64))),
        'not stored in clear',
      );
      for (const [s, e] of [
        [0, size],
        [0, 1],
        [CHUNK - 3, CHUNK + 3],
        [1, size - 1],
        [size - 1, size],
        [2 * CHUNK, 3 * CHUNK],
        [size, size],
      ] as const) {
        if (s < 0 || e > size || s > e) continue;
        for (const [i, reader] of readers(dir).entries())
          assert.deepEqual(
            await collect(await reader.read(key, { start: s, end: e })),
            data.subarray(s, e),
            `range ${s}-${e} of ${size}, read path ${i}`,
          );
      }
    }
    const listed = new Map<string, number>();
    for await (const page of storage.list('')) for (const o of page.objects) listed.set(o.key, o.size);
    assert.equal(listed.has(CIPHER_KEY_OBJECT), false, 'the key object is not listed');
    for (const size of sizes) assert.equal(listed.get(`1700000000000/file-${size}`), size);
    assert.equal(await repositoryIsEncrypted(new PosixStorage(dir)), true);
    // The passphrase is nowhere in what was stored.
    const walk = (d: string): string[] =>
      readdirSync(d, { withFileTypes: true }).flatMap((e) =>
        e.isDirectory() ? walk(join(d, e.name)) : [join(d, e.name)],
      );
    for (const f of walk(dir))
      assert.equal(readFileSync(f).includes(Buffer.from(PASS)), false, `${f} holds the passphrase`);
  });

  test('a flipped byte anywhere in an object is detected, naming the object', async () => {
    const { dir, storage } = fresh('flip');
    const data = randomBytes(3 * CHUNK + 100);
    await storage.put('archived_wals/000000010000000000000001', data);
    const path = join(dir, 'archived_wals/000000010000000000000001');
    const original = readFileSync(path);
    for (const at of [0, 9, 20, HEADER_BYTES + 5, HEADER_BYTES + CHUNK + TAG_BYTES - 1, original.length - 1]) {
      const bytes = Buffer.from(original);
      bytes[at] ^= 0x01;
      writeFileSync(path, bytes);
      for (const [i, reader] of readers(dir).entries()) {
        // A damaged header fails read() itself, a damaged chunk the stream: both reject this promise.
        const readBack = async () => collect(await reader.read('archived_wals/000000010000000000000001'));
        await assert.rejects(
          readBack(),
          (err: unknown) =>
            err instanceof StorageError && /000000010000000000000001/.test(err.message) && !/\n/.test(err.message),
          `byte ${at} flipped, read path ${i}`,
        );
      }
    }
    writeFileSync(path, original);
    assert.deepEqual(
      await storage.readAll('archived_wals/000000010000000000000001', 1 << 20),
      data,
      'restored original reads',
    );
  });

  test('truncation at a chunk boundary and inside a chunk is detected', async () => {
    const { dir, storage } = fresh('cut');
    const data = randomBytes(4 * CHUNK);
    await storage.put('b', data);
    const path = join(dir, 'b');
    const original = readFileSync(path);
    for (const length of [HEADER_BYTES + 2 * (CHUNK + TAG_BYTES), HEADER_BYTES + CHUNK + 7, HEADER_BYTES]) {
      writeFileSync(path, original);
      truncateSync(path, length);
      for (const [i, s] of readers(dir).entries())
        await assert.rejects(
          (async () => collect(await s.read('b')))(),
          (err: unknown) => err instanceof StorageError && /b/.test(err.message),
          `cut at ${length}, read path ${i}`,
        );
    }
  });

  test('an object moved or copied under another name does not decrypt; a published .partial does', async () => {
    const { dir, storage } = fresh('move');
    await storage.put('1700000000001.partial/base.tar', Buffer.from('tar bytes'));
    mkdirSync(join(dir, '1700000000001'));
    copyFileSync(join(dir, '1700000000001.partial/base.tar'), join(dir, '1700000000001/base.tar'));
    assert.equal((await storage.readAll('1700000000001/base.tar', 100)).toString(), 'tar bytes', 'renamed into place');
    copyFileSync(join(dir, '1700000000001.partial/base.tar'), join(dir, '1700000000001/other.tar'));
    await assert.rejects((async () => collect(await storage.read('1700000000001/other.tar')))(), StorageError);
    await assert.rejects(storage.read('missing'), StorageNotFoundError);
  });

  test('a wrong passphrase fails at once; a repository is never half encrypted', async () => {
    const { dir, storage } = fresh('keys');
    await storage.put('x', Buffer.from('secret'));
    const wrong = new CipherStorage(new PosixStorage(dir), settings('not the passphrase'));
    await assert.rejects(
      wrong.readAll('x', 100),
      (err: unknown) => err instanceof BartError && /wrong passphrase/.test(err.message),
    );
    await assert.rejects(wrong.stat('x'), /wrong passphrase/);
    const plainDir = join(root, 'plain');
    await new PosixStorage(plainDir).put('archived_wals/000000010000000000000001', Buffer.from('plain wal'));
    const refused = new CipherStorage(new PosixStorage(plainDir), settings());
    await assert.rejects(
      refused.put('y', Buffer.from('z')),
      (err: unknown) => err instanceof BartError && /unencrypted/.test(err.message),
    );
    const damagedKey = fresh('damagedkey');
    await damagedKey.storage.put('x', Buffer.from('1'));
    writeFileSync(join(damagedKey.dir, CIPHER_KEY_OBJECT), '{"format":1}');
    const reopened = new CipherStorage(new PosixStorage(damagedKey.dir), settings());
    await assert.rejects(reopened.readAll('x', 10), /damaged/);
  });

  test('the key cache derives once per salt and passphrase, and never lets a wrong passphrase through', async () => {
    const { dir, storage } = fresh('cache');
    await storage.put('x', Buffer.from('secret'));
    const before = keyDerivationCount();
    // The right passphrase again (another CipherStorage, as each command's call sites make): no new scrypt.
    const again = new CipherStorage(new PosixStorage(dir), settings());
    assert.equal((await again.readAll('x', 100)).toString(), 'secret');
    assert.equal(keyDerivationCount(), before, 'the cached key serves the same salt and passphrase');
    // A wrong passphrase, after the right one's key is cached, and then once more (its own key cached too).
    for (let round = 0; round < 2; round++) {
      const wrong = new CipherStorage(new PosixStorage(dir), settings(PASS + ' '));
      await assert.rejects(
        wrong.readAll('x', 100),
        (err: unknown) => err instanceof BartError && /wrong passphrase/.test(err.message),
        `round ${round}`,
      );
    }
    assert.equal(keyDerivationCount(), before + 1, 'the wrong passphrase derived its own key, once');
  });

  test('a new root shares the salt of its sibling root when the passphrase opens it, else gets its own', async () => {
    const catalog = fresh('sib-catalog');
    await catalog.storage.put('1700000000003/backupinfo', Buffer.from('info'));
    const walDir = join(catalog.dir, 'archived_wals');
    const before = keyDerivationCount();
    const wal = new CipherStorage(new PosixStorage(walDir), {
      ...settings(),
      sibling: () => new PosixStorage(catalog.dir),
    });
    await wal.put('000000010000000000000003', Buffer.from('wal'));
    assert.equal(keyDerivationCount(), before, 'no scrypt: the sibling key was derived already');
    const keyOf = (d: string) => JSON.parse(readFileSync(join(d, CIPHER_KEY_OBJECT), 'utf8')) as { salt: string };
    assert.equal(keyOf(walDir).salt, keyOf(catalog.dir).salt, 'one salt for both roots');
    // The shared key still binds names: the catalog's object under the WAL root's name does not decrypt.
    copyFileSync(join(catalog.dir, '1700000000003/backupinfo'), join(walDir, '000000010000000000000004'));
    await assert.rejects((async () => collect(await wal.read('000000010000000000000004')))(), StorageError);
    // A sibling this passphrase does not open: a salt of its own.
    const other = fresh('sib-other');
    const otherWal = join(other.dir, 'wal');
    const separate = new CipherStorage(new PosixStorage(otherWal), {
      ...settings('another passphrase'),
      sibling: () => new PosixStorage(catalog.dir),
    });
    await separate.put('000000010000000000000005', Buffer.from('wal'));
    assert.notEqual(keyOf(otherWal).salt, keyOf(catalog.dir).salt);
    assert.equal((await separate.readAll('000000010000000000000005', 10)).toString(), 'wal');
  });

  test('large objects seal in the worker thread: same format, every check still holds', async () => {
    const { dir, storage } = fresh('worker');
    // 100 chunks: the first ones are sealed here, the rest in the sealing worker.
    const data = randomBytes(100 * CHUNK + 123);
    const w = await storage.create('1700000000004/base.tar');
    for (let at = 0; at < data.length; at += 5000) await w.write(data.subarray(at, Math.min(data.length, at + 5000)));
    await w.finish();
    const path = join(dir, '1700000000004/base.tar');
    const original = readFileSync(path);
    assert.equal(original.length, HEADER_BYTES + data.length + 101 * TAG_BYTES);
    assert.deepEqual(await collect(await storage.read('1700000000004/base.tar')), data);
    for (const [s, e] of [
      [40 * CHUNK - 5, 41 * CHUNK + 5],
      [99 * CHUNK, data.length],
    ] as const)
      assert.deepEqual(
        await collect(await storage.read('1700000000004/base.tar', { start: s, end: e })),
        data.subarray(s, e),
      );
    // What a restore worker opens (the key handed over, no passphrase) reads the same bytes.
    const source = await storage.workerSource();
    assert.ok(source, 'a POSIX repository can be read by workers');
    assert.deepEqual(await collect(await openWorkerSource(source).read('1700000000004/base.tar')), data);
    // A flipped byte in a worker-sealed chunk, and a cut at a chunk boundary there: detected.
    const flipped = Buffer.from(original);
    flipped[HEADER_BYTES + 60 * (CHUNK + TAG_BYTES) + 9] ^= 0x80;
    writeFileSync(path, flipped);
    await assert.rejects(
      (async () =>
        collect(await new CipherStorage(new PosixStorage(dir), settings()).read('1700000000004/base.tar')))(),
      (err: unknown) => err instanceof StorageError && /chunk 60 does not authenticate/.test(err.message),
    );
    writeFileSync(path, original.subarray(0, HEADER_BYTES + 70 * (CHUNK + TAG_BYTES)));
    await assert.rejects(
      (async () =>
        collect(await new CipherStorage(new PosixStorage(dir), settings()).read('1700000000004/base.tar')))(),
      (err: unknown) => err instanceof StorageError && /base\.tar/.test(err.message),
    );
  });

  test('a server without a cipher refuses an encrypted repository before reading or writing', async () => {
    const { dir, storage } = fresh('guard');
    await storage.put('1700000000002/backupinfo', Buffer.from('x'));
    const guarded = new PlainRepositoryGuard(new PosixStorage(dir));
    const refused = (err: unknown) => err instanceof BartError && /is encrypted/.test(err.message);
    await assert.rejects(guarded.put('archived_wals/000000010000000000000002', Buffer.from('plain')), refused);
    await assert.rejects(guarded.readAll('1700000000002/backupinfo', 100), refused);
    const plain = new PlainRepositoryGuard(new PosixStorage(join(root, 'plain-ok')));
    await plain.put('a', Buffer.from('b'));
    assert.equal((await plain.readAll('a', 10)).toString(), 'b');
  });

  test('the passphrase file must be private to the BART user', async () => {
    const file = join(root, 'pass');
    writeFileSync(file, 'from-file\n', { mode: 0o600 });
    assert.equal(await readPassphrase({ path: file, at: 'bart.cfg:3' }), 'from-file');
    writeFileSync(file, 'from-file\n', { mode: 0o644 });
    const { chmodSync } = await import('node:fs');
    chmodSync(file, 0o644);
    await assert.rejects(
      readPassphrase({ path: file, at: 'bart.cfg:3' }),
      (err: unknown) => err instanceof BartError && /bart\.cfg:3/.test(err.message) && !/from-file/.test(err.message),
    );
    const saved = process.env.BART_CIPHER_PASS;
    process.env.BART_CIPHER_PASS = 'from-env';
    try {
      assert.equal(await readPassphrase(undefined), 'from-env');
      delete process.env.BART_CIPHER_PASS;
      await assert.rejects(readPassphrase(undefined), /no passphrase/);
    } finally {
      if (saved !== undefined) process.env.BART_CIPHER_PASS = saved;
    }
  });
});
