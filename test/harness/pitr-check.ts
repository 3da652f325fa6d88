// Test harness: the check after a point-in-time RESTORE — restore_command is ARCHIVE-GET, the cluster starts, recovery ends, the tables hold what they held at the target.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BartSetup } from './bart.js';
import { TestCluster } from './cluster.js';
import { tableFingerprints } from './load.js';
import { waitFor } from './wait.js';

/** What {@link restoreToTimeAndCompare} restores and what it expects. */
export interface PitrCheck {
  /** The bart.cfg and runner the RESTORE uses. */
  setup: BartSetup;
  /** PostgreSQL major version the restored cluster is started with. */
  version: number;
  /** The server's name in bart.cfg (also what its restore_command must name). */
  server: string;
  /** The backup restored (the end of a chain restores the whole chain). */
  backupId: string;
  /** Restore target directory (absent); the caller removes it. */
  path: string;
  /** Recovery target time (`-g`), as PostgreSQL prints clock_timestamp(). */
  target: string;
  /** {@link tableFingerprints} of the source taken at the target. */
  expected: Record<string, string>;
}

/**
 * RESTORE -g TARGET --target-action promote (2 workers), then: postgresql.auto.conf's restore_command is bart's
 * ARCHIVE-GET for this server, the restored cluster starts, leaves recovery (WAL fetched through ARCHIVE-GET) and
 * its table fingerprints equal `expected`. The started cluster is destroyed; the data directory is left to the caller.
 */
export async function restoreToTimeAndCompare(c: PitrCheck): Promise<void> {
  const r = await c.setup.bart([
    'RESTORE',
    '-s',
    c.server,
    '-i',
    c.backupId,
    '-p',
    c.path,
    '-w',
    '2',
    '-g',
    c.target,
    '--target-action',
    'promote',
  ]);
  assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
  const name = c.server.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  assert.match(
    readFileSync(join(c.path, 'postgresql.auto.conf'), 'utf8'),
    new RegExp(`^restore_command = '.*ARCHIVE-GET -s ''${name}'' %f %p'$`, 'm'),
  );
  const restored = await TestCluster.create({ version: c.version, dataDir: c.path });
  try {
    await waitFor('the end of recovery', async () => (await restored.scalar('SELECT pg_is_in_recovery()')) !== true, {
      timeoutMs: 90_000,
      details: () => restored.logTail(),
    });
    assert.deepEqual(await tableFingerprints(restored), c.expected);
  } finally {
    await restored.destroy();
  }
}
