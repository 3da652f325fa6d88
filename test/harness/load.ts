// Test harness: load on a test cluster, pgbench, a background writer and table fingerprints.

import pg from 'pg';
import type { TestCluster } from './cluster.js';
import { clientTool } from './pg-binaries.js';
import { runOk } from './os.js';

/** `pgbench -i -s scale` (Debian's pgbench works against every supported version). */
export async function pgbenchInit(cluster: TestCluster, scale: number, database = 'postgres'): Promise<void> {
  await runOk(clientTool('pgbench'), [
    '-i',
    '-q',
    '-s',
    String(scale),
    '-h',
    cluster.host,
    '-p',
    String(cluster.port),
    '-U',
    'postgres',
    database,
  ]);
}

/** Runs the pgbench TPC-B-like load for a number of seconds. */
export async function pgbenchRun(
  cluster: TestCluster,
  seconds: number,
  clients = 2,
  database = 'postgres',
): Promise<void> {
  await runOk(clientTool('pgbench'), [
    '-n',
    '-T',
    String(seconds),
    '-c',
    String(clients),
    '-h',
    cluster.host,
    '-p',
    String(cluster.port),
    '-U',
    'postgres',
    database,
  ]);
}

/** A background writer: inserts and updates rows until stopped; `stop()` returns rows written. */
export interface BackgroundWriter {
  stop(): Promise<number>;
}

/** Starts writes into `table` (created if missing) on its own connection, as a running application would. */
export async function startWriter(
  cluster: TestCluster,
  table = 'writer_load',
  database = 'postgres',
): Promise<BackgroundWriter> {
  const client = new pg.Client(cluster.connectionConfig(database));
  client.on('error', () => undefined);
  await client.connect();
  await client.query(`CREATE TABLE IF NOT EXISTS ${table} (id bigserial PRIMARY KEY, v int, payload text)`);
  let running = true;
  let rows = 0;
  const loop = (async () => {
    while (running) {
      try {
        await client.query(
          `INSERT INTO ${table} (v, payload) SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 200) g`,
        );
        await client.query(`UPDATE ${table} SET v = v + 1 WHERE id % 97 = $1`, [rows % 97]);
        rows += 200;
      } catch {
        running = false; // server stopped under us: the test decides whether that matters
      }
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      await client.end().catch(() => undefined);
      return rows;
    },
  };
}

/** Per-table row count and an order-independent content hash, for comparing a restore with its source. */
export async function tableFingerprints(cluster: TestCluster, database = 'postgres'): Promise<Record<string, string>> {
  const tables = await cluster.query<{ name: string }>(
    `SELECT format('%I.%I', n.nspname, c.relname) AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r','p','m') AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%'
       AND c.relpersistence = 'p' ORDER BY 1`,
    [],
    database,
  );
  const out: Record<string, string> = {};
  for (const { name } of tables) {
    const rows = await cluster.query<{ n: string; h: string }>(
      `SELECT count(*)::text AS n, coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0)::text AS h FROM ${name} t`,
      [],
      database,
    );
    out[name] = `${rows[0]!.n}:${rows[0]!.h}`;
  }
  return out;
}
