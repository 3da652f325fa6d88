// Tests of the CRC-32C addon (native/crc32c.c): built by `npm run build`, it must give exactly @node-rs/crc32's values
// (backups record CRC-32C digests, pg_verifybackup checks them, and backups taken with either path must verify).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { crc32c as portableCrc32c } from '@node-rs/crc32';
import { crc32c, nativeCrc32c } from '../src/util/crc32c.js';

test('npm run build built the CRC-32C addon and pgbart uses it', () => {
  assert.ok(
    nativeCrc32c,
    'native/build/crc32c.node missing, not loadable or no SSE4.2: scripts/install-deps.sh installs gcc',
  );
  assert.equal(crc32c, nativeCrc32c);
});

test('the addon gives the standard check value and @node-rs/crc32 values for any length, offset and start', (t) => {
  if (!nativeCrc32c) return t.skip('addon not built (the test above fails)');
  const native = nativeCrc32c;
  // The CRC-32C check value (RFC 3720, appendix B.4).
  assert.equal(native(Buffer.from('123456789')), 0xe3069283);
  assert.equal(native(Buffer.alloc(0), 0x12345678), 0x12345678);
  const data = randomBytes(300_000);
  // Every length around the block edges (3 x 512 and 3 x 4096 bytes) and the 8-byte steps, at every alignment.
  const lengths = [0, 1, 7, 8, 9, 1535, 1536, 1537, 12_287, 12_288, 12_289, 13_824 + 5, 65_536, 262_144 + 3];
  for (let len = 0; len < 40; len++) lengths.push(len);
  for (let i = 0; i < 300; i++) lengths.push(Math.floor(Math.random() * 100_000));
  for (const len of lengths) {
    for (const offset of [0, 1, 3, 5, 8]) {
      const view = data.subarray(offset, offset + len);
      const initial = (Math.random() * 2 ** 32) >>> 0;
      assert.equal(native(view, initial), portableCrc32c(view, initial), `length ${len} offset ${offset}`);
      assert.equal(native(view), portableCrc32c(view, 0), `length ${len} offset ${offset} from 0`);
    }
  }
  // Continuation: the CRC of a|b is the CRC of b continued from the CRC of a.
  const a = data.subarray(0, 12_345);
  const b = data.subarray(12_345, 100_000);
  assert.equal(native(b, native(a)), portableCrc32c(data.subarray(0, 100_000), 0));
  // A Uint8Array that is not a Buffer, as the file hash hands in.
  const plain = new Uint8Array(data.buffer, data.byteOffset + 10, 5000);
  assert.equal(native(plain, 1), portableCrc32c(Buffer.from(plain), 1));
});

test('the addon refuses what is not bytes, and gives the same values in worker threads', async (t) => {
  if (!nativeCrc32c) return t.skip('addon not built (the first test fails)');
  const native = nativeCrc32c;
  assert.throws(() => native('text' as unknown as Uint8Array), TypeError);
  assert.throws(() => native(new Uint16Array(4) as unknown as Uint8Array), TypeError);
  assert.throws(() => native(Buffer.alloc(4), 'x' as unknown as number), TypeError);
  // Backups hash in worker threads: each loads the addon; the tables are made once per process.
  const module = new URL('../src/util/crc32c.js', import.meta.url).href;
  const code = `
    import { parentPort } from 'node:worker_threads';
    import { randomBytes } from 'node:crypto';
    import { createRequire } from 'node:module';
    const portable = createRequire(${JSON.stringify(module)})('@node-rs/crc32').crc32c;
    const { nativeCrc32c } = await import(${JSON.stringify(module)});
    let same = nativeCrc32c !== undefined;
    for (let i = 0; i < 50; i++) { const b = randomBytes(1 + i * 997); same &&= nativeCrc32c(b, i) === portable(b, i); }
    parentPort.postMessage(same);`;
  const results = await Promise.all(
    [0, 1, 2, 3].map(
      () =>
        new Promise<unknown>((resolve, reject) => {
          const w = new Worker(new URL(`data:text/javascript,${encodeURIComponent(code)}`), {});
          w.once('message', resolve);
          w.once('error', reject);
        }),
    ),
  );
  assert.deepEqual(results, [true, true, true, true]);
});
