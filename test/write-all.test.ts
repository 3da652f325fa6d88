// Tests: whole writes in calls of at most 1 MiB — every byte lands where it belongs, at the offset or a position.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { MAX_WRITE_BYTES, writeAll, writeAllSync } from '../src/util/write-all.js';
import { makeTempDir, removeTree } from './harness/os.js';

test('writeAll / writeAllSync: data larger than one call, appended and at a position, read back byte for byte', async () => {
  const dir = makeTempDir('write-all');
  try {
    // Not a multiple of the call size, so the last call is a short one.
    const big = randomBytes(3 * MAX_WRITE_BYTES + 12345);
    const small = randomBytes(100);

    const syncPath = join(dir, 'sync');
    const fd = openSync(syncPath, 'w');
    writeAllSync(fd, small);
    writeAllSync(fd, big);
    writeAllSync(fd, big, 50); // over bytes 50.., the file offset unchanged
    writeAllSync(fd, small);
    closeSync(fd);
    // small[0..50], big over the rest of small and its own first copy, the first copy's last 50 bytes, small.
    const expected = Buffer.concat([small.subarray(0, 50), big, big.subarray(big.length - 50), small]);
    assert.ok(readFileSync(syncPath).equals(expected), 'writeAllSync');

    const asyncPath = join(dir, 'async');
    const handle = await open(asyncPath, 'w');
    await writeAll(handle, small);
    await writeAll(handle, big);
    await writeAll(handle, big, 50);
    await writeAll(handle, small);
    await handle.close();
    assert.ok(readFileSync(asyncPath).equals(expected), 'writeAll');
  } finally {
    removeTree(dir);
  }
});
