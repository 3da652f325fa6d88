import { test } from 'node:test';
import assert from 'node:assert/strict';
import { waitFor } from './harness/wait.js';

test('waitFor: returns what the probe found, sync or async, once it stops returning false/null/undefined', async () => {
  let n = 0;
  assert.equal(await waitFor('the third probe', () => ++n >= 3, { intervalMs: 1 }), true);
  assert.equal(n, 3);
  let m = 0;
  const found = await waitFor('a name', async () => (++m < 3 ? undefined : `name-${m}`), { intervalMs: 1 });
  assert.equal(found, 'name-3');
  // 0 and '' are values, not "not yet".
  assert.equal(await waitFor('zero', () => 0), 0);
  assert.equal(await waitFor('empty string', () => ''), '');
  let k = 0;
  assert.equal(await waitFor('null, then a value', () => (k++ === 0 ? null : 'v'), { intervalMs: 1 }), 'v');
});

test('waitFor: a timeout names what it waited for and the details, after a last probe at the deadline', async () => {
  let probes = 0;
  const never = () => {
    probes++;
    return false;
  };
  await assert.rejects(
    waitFor('the moon', never, { timeoutMs: 50, intervalMs: 10, details: () => 'log tail here' }),
    (e: unknown) => e instanceof Error && e.message === 'timed out after 50 ms waiting for the moon\nlog tail here',
  );
  assert.ok(probes >= 2, `probed ${probes} times`);
});

test('waitFor: an exception from the probe fails the wait at once', async () => {
  let probes = 0;
  await assert.rejects(
    waitFor(
      'a broken probe',
      () => {
        probes++;
        throw new Error('probe broke');
      },
      { timeoutMs: 60_000 },
    ),
    /probe broke/,
  );
  assert.equal(probes, 1);
});
