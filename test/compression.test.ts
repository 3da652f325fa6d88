import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  compressChunk,
  compressionExtension,
  createDecompressor,
  looksIncompressible,
  type CompressionMethod,
} from '../src/storage/compression.js';

const TOOLS: Record<string, string[]> = { gzip: ['gzip', '-dc'], lz4: ['lz4', '-dc'], zstd: ['zstd', '-dc', '-q'] };

async function decode(method: CompressionMethod, data: Buffer): Promise<Buffer> {
  const d = createDecompressor(method);
  const out: Buffer[] = [];
  d.on('data', (c: Buffer) => out.push(c));
  await new Promise((resolve, reject) => {
    d.on('end', resolve);
    d.on('error', reject);
    d.end(data);
  });
  return Buffer.concat(out);
}

test('compression units: random (stored) and compressible chunks, concatenated, decode with ours and the standard tools', async () => {
  const random = randomBytes(1_000_003);
  const text = Buffer.from('pgbart '.repeat(150_000));
  assert.equal(looksIncompressible(random), true);
  assert.equal(looksIncompressible(text), false);
  const parts = [random, text, Buffer.alloc(0), randomBytes(70_000)];
  for (const method of ['gzip', 'lz4', 'zstd'] as const) {
    const units = parts.map((p) => compressChunk(method, 3, p));
    assert.ok(units[0]!.length < random.length + 1024, `${method}: random data is stored, not inflated`);
    assert.ok(units[1]!.length < text.length / 10, `${method}: text is compressed`);
    const stream = Buffer.concat(units);
    assert.ok((await decode(method, stream)).equals(Buffer.concat(parts)), `${method}: our decoder`);
    const viaTool = execFileSync(TOOLS[method]![0]!, TOOLS[method]!.slice(1), {
      input: stream,
      maxBuffer: 64 * 1024 * 1024,
    });
    assert.ok(
      viaTool.equals(Buffer.concat(parts)),
      `${method}: ${TOOLS[method]![0]} -d reads ${compressionExtension(method)} units`,
    );
  }
});

test('LZ4 frames written by the lz4 tool (independent or linked blocks, checksums, content size) decode when fed in odd-sized pieces', async () => {
  const data = Buffer.from(randomBytes(3_000_000).toString('base64'));
  for (const opts of [['-B4'], ['-BD', '-B4'], ['-BD', '-B7', '--content-size'], ['-B5', '-BX']]) {
    const framed = execFileSync('lz4', ['-q', '-c', ...opts], { input: data, maxBuffer: 64 * 1024 * 1024 });
    const d = createDecompressor('lz4');
    const out: Buffer[] = [];
    d.on('data', (c: Buffer) => out.push(c));
    const done = new Promise((resolve, reject) => {
      d.on('end', resolve);
      d.on('error', reject);
    });
    // A prime-sized piece at a time: blocks and frame headers straddle every boundary.
    for (let at = 0; at < framed.length; at += 7919) d.write(framed.subarray(at, at + 7919));
    d.end();
    await done;
    assert.ok(Buffer.concat(out).equals(data), `lz4 ${opts.join(' ')}`);
  }
});
