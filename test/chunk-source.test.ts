// Concept: tests of the restore workers' pull decoding (restore/chunk-source.ts) against our encoders, the lz4/zstd tools and damaged input.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { compressChunk, type CompressionMethod } from '../src/storage/compression.js';
import { openChunks } from '../src/restore/chunk-source.js';
import { decodeLz4Block, decodeLz4BlockInto } from '../src/storage/compression.js';
import { localOpener, ObjectMissingError } from '../src/restore/object-source.js';
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
  const chunks = await openChunks(localOpener, { key: 'k', name: path, path }, method, start, end);
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
