// Test harness: a few real archived WAL segments from a throwaway cluster, for bad-input and fuzz tests.

/**
 * Produces a few real archived WAL segments from a throwaway PostgreSQL 15 cluster (for the
 * bad-input and fuzz tests). The cluster is destroyed before returning.
 */
import { readdirSync } from 'node:fs';
import { withCluster } from './cluster.js';
import { archiveCommand, inDir, walFileNames } from './wal-workload.js';
import { waitFor } from './wait.js';

/** Archives at least `segments` complete segments into `archive`; returns their paths, in order. */
export async function makeArchivedWal(archive: string, segments: number): Promise<string[]> {
  await withCluster(
    { version: 15, conf: { archive_mode: 'on', archive_command: archiveCommand(archive), wal_compression: 'on' } },
    async (c) => {
      await c.query(`CREATE TABLE fx (id int PRIMARY KEY, v text)`);
      let last = '';
      for (let i = 0; i < segments; i++) {
        await c.query(
          `INSERT INTO fx SELECT g, md5(g::text) FROM generate_series(${i * 20000 + 1}, ${(i + 1) * 20000}) g`,
        );
        await c.query(`UPDATE fx SET v = 'u' WHERE id % 5 = ${i % 5}`);
        if (i % 2 === 1) await c.query('CHECKPOINT');
        last = await c.switchWal();
      }
      await waitFor(`archiving of ${last}`, () => readdirSync(archive).includes(last), { timeoutMs: 60_000 });
    },
  );
  return inDir(archive, walFileNames(readdirSync(archive)));
}
