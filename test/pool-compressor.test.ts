// Tests: the unit buffers of an uncompressed backup — reused once written, and only those the compressor gave out.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { poolCompressor } from '../src/backup/pool-compressor.js';

const UNIT = 4096;

test('pool compressor, no compression: a written unit buffer is reused; a view, a foreign buffer or a second recycle is not', async () => {
  const units = poolCompressor(undefined, 'none', 0, UNIT, 4);
  const first = units.unitBuffer!();
  assert.equal(first.length, UNIT);
  // Stored as it is: the unit itself is what gets written.
  assert.equal(await units.compress(first), first);
  units.recycle!(first);
  units.recycle!(first); // twice: must not be handed to two units
  const again = units.unitBuffer!();
  assert.equal(again, first, 'the written unit buffer is reused');
  assert.notEqual(units.unitBuffer!(), first, 'a buffer recycled twice is handed out once');

  // A unit cut from a larger piece shares memory with the next unit: never reused.
  const piece = Buffer.alloc(2 * UNIT);
  const view = piece.subarray(0, UNIT);
  units.recycle!(view);
  // Bytes a caller gave whole (a small file's content) stay the caller's.
  const foreign = Buffer.allocUnsafeSlow(UNIT);
  units.recycle!(foreign);
  const next = [units.unitBuffer!(), units.unitBuffer!()];
  assert.ok(!next.some((b) => b.buffer === piece.buffer || b === foreign), 'only buffers it gave out come back');
});
