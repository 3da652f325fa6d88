import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runChaos } from './harness/chaos-engine.js';
import { versionsUnderTest } from './harness/pg-binaries.js';
import { sized } from './harness/test-size.js';

// The short, fixed-seed run of the randomized correctness suite: a 5-second workload in npm test, 12 seconds in
// npm run test:long (the long one, many seeds: npm run test:chaos).
const SEED = 20261124;

for (const version of versionsUnderTest()) {
  test(`chaos (seed ${SEED}, PostgreSQL ${version}): every backup of a random workload restores exactly`, async () => {
    const lines: string[] = [];
    const r = await runChaos({ seed: SEED, seconds: sized(5, 12), version, log: (l) => lines.push(l) });
    assert.ok(r.backups >= 2 && r.incrementals >= 1, `a chain was built: ${JSON.stringify(r)}\n${lines.join('\n')}`);
    assert.ok(r.restores >= r.backups, `every backup restored (${r.restores} restores, ${r.backups} backups)`);
  });
}
