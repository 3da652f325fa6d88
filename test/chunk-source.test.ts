// Concept: tests of the restore workers' pull decoding (restore/chunk-source.ts) against our encoders, the lz4/zstd tools and damaged input.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { compressChunk, type CompressionMethod } from '../src/storage/compression.js';
import { openChunks, type ChunkSource } from '../src/restore/chunk-source.js';
import { decodeLz4Block, decodeLz4BlockInto } from '../src/storage/compression.js';
import { cipherOpener, localOpener, ObjectMissingError, type ObjectOpener } from '../src/restore/object-source.js';
import { CipherStorage } from '../src/storage/encryption/cipher-storage.js';
import { HEADER_BYTES, TAG_BYTES } from '../src/storage/encryption/cipher-format.js';
import { PosixStorage } from '../src/storage/posix/posix-storage.js';
import { StorageError } from '../src/storage/storage.js';
import { makeTempDir, removeTree } from './harness/os.js';

const require = createRequire(import.meta.url);
const lz4 = require('lz4-napi') as { compressSync(data: Buffer): Buffer };

/** Data like a cluster's: 8 KiB pages of repeated tuples with counters, some random, some zero. */
function pagesLike(bytes: number, seed: number): Buffer {
  const out = Buffer.alloc(bytes);
  let x = seed;
  for (let at = 0; at + 16 <= bytes; at += 16) {
    x = (x * 1103515245 + 12345) >>> 0;
    const kind = (at >> 13) % 4;
    if (kind === 0) out.writeUInt32LE(x, at);
    else if (kind === 1) out.write(`row ${at >> 4} `.padEnd(16, '.'), at);
    else if (kind === 2) randomBytes(16).copy(out, at);
  }
  return out;
}

/** Every chunk of `path` decoded (each copied before the next is pulled, as the chunks are recycled). */
async function decodeFile(path: string, method: CompressionMethod, start = 0, end?: number): Promise<Buffer> {
  return collect(await openChunks(localOpener, { key: 'k', name: path, path }, method, start, end));
}

/** All of a chunk source, each chunk copied before the next is pulled (they are recycled). */
async function collect(chunks: ChunkSource): Promise<Buffer> {
  const parts: Buffer[] = [];
  try {
    for await (const c of chunks) parts.push(Buffer.from(c));
  } finally {
    chunks.close();
  }
  return Buffer.concat(parts);
}

test('restore pull decoding: our units, the lz4 and zstd tools, ranges from a unit start, each decodes to the original', async () => {
  const dir = makeTempDir('chunks');
  try {
    // Zeros of exactly 1 MiB: the zstd output buffer's size, filled by the frame's last call.
    const parts = [
      pagesLike(4 * 1024 * 1024, 1),
      randomBytes(1_500_000),
      Buffer.alloc(0),
      pagesLike(3_000_001, 2),
      Buffer.alloc(1024 * 1024),
    ];
    const whole = Buffer.concat(parts);
    for (const method of ['none', 'lz4', 'zstd'] as const) {
      const units = parts.map((p) => compressChunk(method, 3, p));
      const file = join(dir, `ours.${method}`);
      writeFileSync(file, Buffer.concat(units));
      assert.ok((await decodeFile(file, method)).equals(whole), `${method}: whole file`);
      // One unit alone whose output ends exactly where the decoder's output buffer does.
      writeFileSync(file, units[4]!);
      assert.ok((await decodeFile(file, method)).equals(parts[4]!), `${method}: 1 MiB of zeros alone`);
      writeFileSync(file, Buffer.concat(units));
      // A task's range: from the second unit's start to the third's end.
      const start = units[0]!.length;
      const end = start + units[1]!.length + units[2]!.length;
      assert.ok(
        (await decodeFile(file, method, start, end)).equals(Buffer.concat(parts.slice(1, 3))),
        `${method}: range`,
      );
    }
    // Frames other tools write: linked blocks, block and content checksums, content size, small blocks.
    const raw = join(dir, 'raw');
    writeFileSync(raw, whole);
    for (const flags of [[], ['-BD'], ['-BX', '--content-size'], ['-B4', '-BD', '--no-frame-crc']]) {
      const out = join(dir, 'tool.lz4');
      execFileSync('lz4', ['-q', '-f', ...flags, raw, out]);
      assert.ok((await decodeFile(out, 'lz4')).equals(whole), `lz4 ${flags.join(' ')}`);
    }
    execFileSync('zstd', ['-q', '-f', '-19', raw, '-o', join(dir, 'tool.zst')]);
    assert.ok((await decodeFile(join(dir, 'tool.zst'), 'zstd')).equals(whole), 'zstd tool');
  } finally {
    removeTree(dir);
  }
});

test('restore pull decoding: a truncated or missing object is an error, never short data', async () => {
  const dir = makeTempDir('chunks');
  try {
    const data = pagesLike(2_000_000, 3);
    for (const method of ['lz4', 'zstd'] as const) {
      const stream = compressChunk(method, 3, data);
      for (const cut of [3, 9, Math.floor(stream.length / 2), stream.length - 1]) {
        const file = join(dir, `cut.${method}`);
        writeFileSync(file, stream.subarray(0, cut));
        await assert.rejects(
          decodeFile(file, method),
          /truncated|corrupt|unknown|incomplete|error/i,
          `${method} cut at ${cut}`,
        );
      }
    }
    await assert.rejects(decodeFile(join(dir, 'absent.lz4'), 'lz4'), ObjectMissingError);
  } finally {
    removeTree(dir);
  }
});

test('LZ4 block decoder: the same bytes as lz4-napi, and damaged blocks throw instead of reading or writing out of bounds', () => {
  const out = Buffer.alloc(4 * 1024 * 1024);
  const samples = [
    pagesLike(1_000_000, 4),
    Buffer.from('a'.repeat(100_000)), // one long overlapping match
    Buffer.from('abcabcabcabd'.repeat(5000)), // short offsets
    randomBytes(70_000), // literals only
    Buffer.from('x'),
  ];
  for (const s of samples) {
    const block = lz4.compressSync(s).subarray(4); // lz4_flex's size prefix dropped
    const n = decodeLz4BlockInto(block, out);
    assert.equal(n, s.length);
    assert.ok(out.subarray(0, n).equals(s));
  }
  // A match reaching before the output's start, and one running past the output buffer.
  assert.throws(() => decodeLz4BlockInto(Buffer.from([0x10, 0x41, 0x05, 0x00]), out), /corrupt LZ4 block/);
  const small = Buffer.alloc(8);
  assert.throws(() => decodeLz4BlockInto(Buffer.from([0x1f, 0x41, 0x01, 0x00, 0x10]), small), /corrupt LZ4 block/);
  // Linked blocks: a match may reach into the dictionary (the frame's previous output), not before it.
  assert.equal(decodeLz4Block(Buffer.from([0x07, 0x0b, 0x00]), Buffer.from('hello world')).toString(), 'hello world');
  assert.throws(() => decodeLz4Block(Buffer.from([0x07, 0x0c, 0x00]), Buffer.from('hello world')), /corrupt LZ4 block/);
  // Literals or a length extension past the block's end.
  assert.throws(() => decodeLz4BlockInto(Buffer.from([0x50, 0x41, 0x42]), out), /corrupt LZ4 block/);
  assert.throws(() => decodeLz4BlockInto(Buffer.from([0xf0, 0xff]), out), /corrupt LZ4 block/);
  // Random damage to a real block: it throws, or decodes to at most the output's size.
  const block = lz4.compressSync(samples[0]!).subarray(4);
  let thrown = 0;
  for (let i = 0; i < 2000; i++) {
    const bad = Buffer.from(block.subarray(0, 1 + ((i * 7919) % block.length)));
    bad[(i * 104729) % bad.length] ^= 1 + (i % 255);
    try {
      assert.ok(decodeLz4BlockInto(bad, out) <= out.length);
    } catch (err) {
      assert.match((err as Error).message, /corrupt LZ4 block/);
      thrown++;
    }
  }
  assert.ok(thrown > 0, 'some damaged blocks are caught');
});

describe('restore pull decoding of an encrypted POSIX repository (positioned reads, decrypted in place)', () => {
  const PASS = 'chunk-source test passphrase';
  /** An encrypted repository in `dir` with chunks of 2^log2 bytes. */
  const cipherStorage = (dir: string, chunkLog2: number) =>
    new CipherStorage(new PosixStorage(dir), { cipher: 'aes-256-gcm', passphrase: async () => PASS, chunkLog2 });
  /** The worker's opener, except that streaming fails: only the positioned path can read. */
  const positionedOnly = (storage: CipherStorage): ObjectOpener => ({
    open: () => Promise.reject(new Error('streamed instead of read with positioned reads')),
    openRange: cipherOpener(storage).openRange!,
  });
  async function decodeStored(
    opener: ObjectOpener,
    key: string,
    method: CompressionMethod,
    start = 0,
    end?: number,
  ): Promise<Buffer> {
    return collect(await openChunks(opener, { key, name: `repo/${key}` }, method, start, end));
  }
  /** Rejects naming the object (and only that: one line, no stack). */
  const refusedNaming = (key: string, what: RegExp) => (err: unknown) =>
    err instanceof StorageError && err.message.includes(key) && what.test(err.message) && !/\n/.test(err.message);

  test('units of every compression decode from the decrypted chunks, whole and by unit range, whatever the chunk size', async () => {
    const dir = makeTempDir('cipher-chunks');
    try {
      const parts = [pagesLike(3 * 1024 * 1024 + 5, 7), randomBytes(700_000), Buffer.alloc(0), pagesLike(1_000_001, 8)];
      const whole = Buffer.concat(parts);
      // 4 KiB chunks: LZ4 blocks straddle many chunks (copied together); 1 MiB: most blocks lie in one (decoded there).
      for (const log2 of [12, 20]) {
        const storage = cipherStorage(join(dir, `repo-${log2}`), log2);
        const opener = positionedOnly(storage);
        for (const method of ['none', 'lz4', 'zstd'] as const) {
          const units = parts.map((p) => compressChunk(method, 3, p));
          const key = `1700000000000/base.tar.${method}`;
          await storage.put(key, Buffer.concat(units));
          assert.ok((await decodeStored(opener, key, method)).equals(whole), `${method}, 2^${log2}: whole`);
          const start = units[0]!.length;
          const end = start + units[1]!.length + units[2]!.length;
          assert.ok(
            (await decodeStored(opener, key, method, start, end)).equals(Buffer.concat(parts.slice(1, 3))),
            `${method}, 2^${log2}: a unit range inside the object`,
          );
          assert.ok(
            (await decodeStored(opener, key, method, start + units[1]!.length + units[2]!.length)).equals(parts[3]!),
            `${method}, 2^${log2}: the last unit to the end`,
          );
        }
        await storage.put('1700000000000/empty', Buffer.alloc(0));
        assert.equal((await decodeStored(opener, '1700000000000/empty', 'none')).length, 0, 'an empty object');
        await assert.rejects(decodeStored(opener, '1700000000000/absent.lz4', 'lz4'), ObjectMissingError);
      }
    } finally {
      removeTree(dir);
    }
  });

  test('a flipped byte, a chunk cut short, a missing final chunk, swapped chunks: refused naming the object', async () => {
    const dir = makeTempDir('cipher-chunks');
    try {
      const C = 4096;
      const sealed = C + TAG_BYTES;
      const storage = cipherStorage(join(dir, 'repo'), 12);
      const opener = positionedOnly(storage);
      const key = '1700000000001/base.tar';
      const path = join(dir, 'repo', key);
      const data = randomBytes(5 * C + 100);
      await storage.put(key, data);
      const original = readFileSync(path);
      assert.ok((await decodeStored(opener, key, 'none')).equals(data), 'the untouched object reads');
      const damage: [string, Buffer, RegExp][] = [];
      const flipped = Buffer.from(original);
      flipped[HEADER_BYTES + 2 * sealed + 100] ^= 0x04;
      damage.push(['a flipped byte in chunk 2', flipped, /chunk 2 does not authenticate/]);
      const tagFlipped = Buffer.from(original);
      tagFlipped[HEADER_BYTES + sealed - 1] ^= 0x01;
      damage.push(['a flipped byte in the tag of chunk 0', tagFlipped, /chunk 0 does not authenticate/]);
      damage.push(['the last chunk cut short', original.subarray(0, original.length - 7), /truncated|authenticate/]);
      damage.push([
        'a chunk cut inside, shorter than a tag',
        original.subarray(0, HEADER_BYTES + 3 * sealed + 5),
        /truncated/,
      ]);
      damage.push([
        'the final chunk missing (cut at a chunk boundary)',
        original.subarray(0, HEADER_BYTES + 5 * sealed),
        /chunk 4 does not authenticate/,
      ]);
      const swapped = Buffer.from(original);
      original.copy(swapped, HEADER_BYTES + sealed, HEADER_BYTES + 2 * sealed, HEADER_BYTES + 3 * sealed);
      original.copy(swapped, HEADER_BYTES + 2 * sealed, HEADER_BYTES + sealed, HEADER_BYTES + 2 * sealed);
      damage.push(['chunks 1 and 2 swapped', swapped, /chunk 1 does not authenticate/]);
      const header = Buffer.from(original);
      header[HEADER_BYTES - 1] ^= 0x01;
      damage.push(['a flipped byte in the header (the object salt)', header, /chunk 0 does not authenticate/]);
      damage.push(['cut inside the header', original.subarray(0, 20), /header/]);
      for (const [what, bytes, reason] of damage) {
        writeFileSync(path, bytes);
        await assert.rejects(decodeStored(opener, key, 'none'), refusedNaming(key, reason), what);
      }
      // A range reads only the chunks it covers, and each of them is checked.
      writeFileSync(path, flipped);
      assert.ok((await decodeStored(opener, key, 'none', 0, 2 * C)).equals(data.subarray(0, 2 * C)), 'chunks 0-1 read');
      await assert.rejects(
        decodeStored(opener, key, 'none', 2 * C - 1, 2 * C + 1),
        refusedNaming(key, /chunk 2 does not authenticate/),
        'a range ending in the damaged chunk',
      );
      // The same object under another name does not decrypt (the name is bound in the associated data).
      writeFileSync(path, original);
      mkdirSync(join(dir, 'repo', '1700000000002'));
      writeFileSync(join(dir, 'repo', '1700000000002', 'base.tar'), original);
      await assert.rejects(
        decodeStored(opener, '1700000000002/base.tar', 'none'),
        refusedNaming('1700000000002/base.tar', /does not authenticate/),
      );
      assert.ok((await decodeStored(opener, key, 'none')).equals(data), 'the original reads again');
    } finally {
      removeTree(dir);
    }
  });
});
