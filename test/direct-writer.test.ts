// Tests: appending through direct I/O (util/direct-writer.ts) — every byte where it belongs, whatever the chunk sizes,
// large files past the page cache, small ones buffered, nothing left open.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import {
  DIRECT_AFTER_BYTES,
  DIRECT_BLOCK_BYTES,
  DirectAppender,
  directIoAvailable,
} from '../src/util/direct-writer.js';
import { writeAll } from '../src/util/write-all.js';
import { makeTempDir, removeTree } from './harness/os.js';

/** Writes `chunks` through a DirectAppender into a new file in `dir`; the appender and the file's content. */
async function append(
  dir: string,
  name: string,
  chunks: Buffer[],
): Promise<{ appender: DirectAppender; data: Buffer }> {
  const path = join(dir, name);
  const handle = await open(path, 'wx', 0o600);
  const appender = new DirectAppender(handle.fd, (data, position) => writeAll(handle, data, position));
  try {
    // One buffer reused for every chunk, changed as soon as write() resolves: the appender must have taken the bytes.
    const reused = Buffer.alloc(Math.max(...chunks.map((c) => c.length), 1));
    for (const chunk of chunks) {
      chunk.copy(reused);
      await appender.write(reused.subarray(0, chunk.length));
      reused.fill(0xee);
    }
    await appender.finish();
    await handle.sync();
  } finally {
    await handle.close();
  }
  return { appender, data: readFileSync(path) };
}

function openDescriptors(): number {
  return readdirSync('/proc/self/fd').length;
}

test('npm run build built the alignment addon: large files can be written past the page cache', () => {
  assert.ok(
    directIoAvailable(),
    'native/build/aligned.node missing or not loadable: scripts/install-deps.sh installs gcc',
  );
});

test('DirectAppender: any chunk sizes land byte for byte; a large file goes direct, a small one buffered', async () => {
  const dir = makeTempDir('direct-writer');
  try {
    const before = openDescriptors();
    // Odd sizes around the alignment, the switch-over point and the block size, then many small pieces (tar headers).
    const sizes = [
      1,
      511,
      4095,
      4097,
      DIRECT_AFTER_BYTES - 3,
      7,
      1 << 20,
      DIRECT_BLOCK_BYTES + 3,
      2 * DIRECT_BLOCK_BYTES,
    ];
    for (let i = 0; i < 3000; i++) sizes.push(1 + ((i * 7919) % 4000));
    sizes.push(3 * DIRECT_BLOCK_BYTES - 1, 12345);
    const chunks = sizes.map((n) => randomBytes(n));
    const big = await append(dir, 'big', chunks);
    assert.ok(big.data.equals(Buffer.concat(chunks)), 'large file content');
    if (directIoAvailable()) assert.ok(big.appender.directBytes > 4 * DIRECT_BLOCK_BYTES, 'large file written direct');

    const smallChunks = [randomBytes(1000), randomBytes(DIRECT_AFTER_BYTES - 2000)];
    const small = await append(dir, 'small', smallChunks);
    assert.ok(small.data.equals(Buffer.concat(smallChunks)), 'small file content');
    assert.equal(small.appender.directBytes, 0, 'a file under the threshold stays buffered');

    // Exactly whole blocks: nothing is left for the buffered tail.
    const whole = [randomBytes(DIRECT_AFTER_BYTES), randomBytes(2 * DIRECT_BLOCK_BYTES)];
    assert.ok((await append(dir, 'whole', whole)).data.equals(Buffer.concat(whole)), 'whole blocks');

    const empty = await append(dir, 'empty', []);
    assert.equal(empty.data.length, 0);
    assert.equal(openDescriptors(), before, 'every descriptor closed');
  } finally {
    removeTree(dir);
  }
});

test('DirectAppender: abort closes the direct descriptor; tmpfs (which may refuse O_DIRECT) still gets every byte', async () => {
  const dir = makeTempDir('direct-writer');
  try {
    const before = openDescriptors();
    const path = join(dir, 'aborted');
    const handle = await open(path, 'wx', 0o600);
    const appender = new DirectAppender(handle.fd, (data, position) => writeAll(handle, data, position));
    await appender.write(randomBytes(3 * DIRECT_BLOCK_BYTES + 5));
    await appender.abort();
    await handle.close();
    assert.equal(openDescriptors(), before, 'descriptors closed after abort');
  } finally {
    removeTree(dir);
  }
  if (!existsSync('/dev/shm')) return;
  const shm = mkdtempSync('/dev/shm/pgbart-direct-writer-');
  try {
    const chunks = [randomBytes(DIRECT_AFTER_BYTES + 100), randomBytes(DIRECT_BLOCK_BYTES * 2 + 77)];
    assert.ok((await append(shm, 'on-tmpfs', chunks)).data.equals(Buffer.concat(chunks)), 'tmpfs content');
  } finally {
    removeTree(shm);
  }
});

test('PGBART_DIRECT_IO=off (what bart.cfg direct_io = off sets) keeps every write buffered', async () => {
  const dir = makeTempDir('direct-writer');
  try {
    const module = new URL('../src/util/direct-writer.js', import.meta.url).href;
    const code = `
      import { open } from 'node:fs/promises';
      const { DirectAppender } = await import(${JSON.stringify(module)});
      const path = ${JSON.stringify(join(dir, 'f'))};
      const handle = await open(path, 'wx', 0o600);
      const appender = new DirectAppender(handle.fd, async (data, position) => { await handle.write(data, 0, data.length, position); });
      await appender.write(Buffer.alloc(20 * 1024 * 1024, 1));
      await appender.finish();
      await handle.close();
      process.stdout.write(String(appender.directBytes));`;
    const direct = (env: Record<string, string>) =>
      execFileSync(process.execPath, ['--input-type=module', '-e', code], {
        env: { ...process.env, ...env },
        encoding: 'utf8',
      });
    assert.equal(direct({ PGBART_DIRECT_IO: 'off' }), '0');
    rmSync(join(dir, 'f'));
    if (directIoAvailable()) assert.notEqual(direct({}), '0', 'on by default');
  } finally {
    removeTree(dir);
  }
});
