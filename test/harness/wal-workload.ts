// Test harness: a varied SQL workload producing every kind of WAL record the scanner must understand.

/**
 * A varied SQL workload for WAL tests: every kind of record the scanner must understand
 * (heap, indexes of several access methods, VACUUM truncation, TRUNCATE, CREATE/DROP DATABASE
 * with both strategies, a tablespace, sequences, large objects, unlogged tables, prepared
 * transactions, aborted creations, big records spanning pages and segments).
 */
import { chownSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { TestCluster } from './cluster.js';
import { testUserIds } from './os.js';

/** Runs the workload; `tablespaceDir` must be an empty directory the cluster's OS user may use. */
export async function runVariedWorkload(
  cluster: TestCluster,
  tablespaceDir: string,
  opts: { bigRecords?: boolean } = {},
): Promise<string[]> {
  mkdirSync(tablespaceDir, { recursive: true });
  const ids = testUserIds();
  if (ids) chownSync(tablespaceDir, ids.uid, ids.gid);
  const v = cluster.version;
  const q = (sql: string, db = 'postgres') => cluster.query(sql, [], db);
  await q(`CREATE TABLE w_main (id int PRIMARY KEY, v text, arr int[], pt point, doc tsvector)`);
  await q(
    `INSERT INTO w_main SELECT g, md5(g::text), ARRAY[g % 100, g % 7], point(g % 300, g / 300), to_tsvector('simple', 'w' || (g % 50)) FROM generate_series(1, 20000) g`,
  );
  await q(`UPDATE w_main SET v = v || 'x' WHERE id % 7 = 0`);
  await q(`DELETE FROM w_main WHERE id % 11 = 0`);
  await q(`VACUUM w_main`);
  await q(`CREATE INDEX w_gin ON w_main USING gin (arr)`);
  await q(`CREATE INDEX w_gist ON w_main USING gist (pt)`);
  await q(`CREATE INDEX w_brin ON w_main USING brin (id)`);
  await q(`CREATE INDEX w_hash ON w_main USING hash (v)`);
  await q(`CREATE INDEX w_spgist ON w_main USING spgist (pt)`);
  await q(`CREATE INDEX w_gin_doc ON w_main USING gin (doc)`);
  if (v >= 15) await q(`ALTER SYSTEM SET wal_compression = 'pglz'`);
  else await q(`ALTER SYSTEM SET wal_compression = on`);
  await q(`SELECT pg_reload_conf()`);
  await q(`CHECKPOINT`);
  await q(
    `INSERT INTO w_main SELECT g, md5(g::text), ARRAY[g % 100], point(g % 300, g / 300), to_tsvector('simple', 'z' || g) FROM generate_series(20001, 26000) g`,
  );
  await q(`UPDATE w_main SET v = 'u' WHERE id % 13 = 0`);
  // lz4 and zstd exist only in builds configured with them (Debian's 15 has both).
  const methods =
    (await cluster.query<{ e: string[] }>(`SELECT enumvals AS e FROM pg_settings WHERE name = 'wal_compression'`))[0]
      ?.e ?? [];
  let mod = 17;
  for (const method of ['lz4', 'zstd']) {
    if (!methods.includes(method)) continue;
    await q(`ALTER SYSTEM SET wal_compression = '${method}'`);
    await q(`SELECT pg_reload_conf()`);
    await q(`CHECKPOINT`);
    await q(`UPDATE w_main SET v = '${method}' WHERE id % ${mod++} = 0`);
  }
  await q(`ALTER SYSTEM RESET wal_compression`);
  // full_page_writes off and on again (XLOG_FPW_CHANGE records).
  await q(`ALTER SYSTEM SET full_page_writes = off`);
  await q(`SELECT pg_reload_conf()`);
  await q(`CHECKPOINT`);
  await q(`UPDATE w_main SET v = 'f' WHERE id % 23 = 0`);
  await q(`ALTER SYSTEM RESET full_page_writes`);
  await q(`SELECT pg_reload_conf()`);
  await q(`CHECKPOINT`);
  // Tail truncation by VACUUM (SMGR_TRUNCATE) and TRUNCATE (new relfilenode, old one dropped).
  await q(`DELETE FROM w_main WHERE id > 15000`);
  await q(`VACUUM w_main`);
  await q(`CREATE TABLE w_vac (id int, pad text)`);
  await q(`INSERT INTO w_vac SELECT g, repeat('v', 200) FROM generate_series(1, 5000) g`);
  await q(`VACUUM w_vac`);
  await q(`DELETE FROM w_vac WHERE id > 1000`);
  await q(`VACUUM w_vac`);
  await q(`CREATE TABLE w_trunc (a int, b text)`);
  await q(`INSERT INTO w_trunc SELECT g, repeat('t', 100) FROM generate_series(1, 3000) g`);
  await q(`TRUNCATE w_trunc`);
  await q(`INSERT INTO w_trunc VALUES (1, 'after truncate')`);
  // Tablespace.
  await q(`CREATE TABLESPACE w_ts LOCATION '${tablespaceDir}'`);
  await q(`CREATE TABLE w_in_ts (a int, b text) TABLESPACE w_ts`);
  await q(`INSERT INTO w_in_ts SELECT g, md5(g::text) FROM generate_series(1, 2000) g`);
  // Sequences, large objects, unlogged tables.
  await q(`CREATE SEQUENCE w_seq`);
  await q(`SELECT nextval('w_seq') FROM generate_series(1, 200)`);
  await q(`SELECT lo_unlink(lo_from_bytea(0, convert_to(repeat('large object ', 5000), 'UTF8')))`);
  await q(`SELECT lo_from_bytea(0, convert_to(repeat('kept large object ', 3000), 'UTF8'))`);
  await q(`CREATE UNLOGGED TABLE w_unlogged (a int PRIMARY KEY, b text)`);
  await q(`INSERT INTO w_unlogged SELECT g, 'u' FROM generate_series(1, 1000) g`);
  // Aborted creation (relation drops in an abort record) and prepared transactions.
  await q(`BEGIN; CREATE TABLE w_aborted (a int); INSERT INTO w_aborted VALUES (1); ROLLBACK`);
  await q(`BEGIN; CREATE TABLE w_prep (a int); INSERT INTO w_prep VALUES (1); PREPARE TRANSACTION 'w_p1'`);
  await q(`COMMIT PREPARED 'w_p1'`);
  await q(`BEGIN; DROP TABLE w_prep; PREPARE TRANSACTION 'w_p2'`);
  await q(`COMMIT PREPARED 'w_p2'`);
  await q(`BEGIN; CREATE TABLE w_prep_abort (a int); PREPARE TRANSACTION 'w_p3'`);
  await q(`ROLLBACK PREPARED 'w_p3'`);
  // Databases with both strategies (PostgreSQL 15+), dropped again; a table in one of them.
  if (v >= 15) {
    await q(`CREATE DATABASE w_db_wal STRATEGY wal_log`);
    await q(`CREATE DATABASE w_db_copy STRATEGY file_copy`);
  } else {
    await q(`CREATE DATABASE w_db_wal`);
    await q(`CREATE DATABASE w_db_copy`);
  }
  await q(`CREATE TABLE in_db (a int)`, 'w_db_wal');
  await q(`INSERT INTO in_db SELECT generate_series(1, 500)`, 'w_db_wal');
  await q(`DROP DATABASE w_db_copy`);
  await q(`DROP DATABASE w_db_wal`);
  await q(`DROP TABLE w_in_ts`);
  await q(`DROP TABLESPACE w_ts`);
  if (opts.bigRecords) {
    // A record spanning many pages, and one longer than two whole 16 MB segments.
    await q(`SELECT pg_logical_emit_message(true, 'w', repeat('m', 100000))`);
    await q(`SELECT pg_logical_emit_message(true, 'w', repeat('M', 33 * 1024 * 1024))`);
  }
  await q(`CHECKPOINT`);
  return methods;
}

/** Names of the WAL files in a directory, sorted (plain segments only). */
export function walFileNames(names: readonly string[]): string[] {
  return names.filter((n) => /^[0-9A-F]{24}$/.test(n)).sort();
}

/** Joins a directory and names. */
export function inDir(dir: string, names: readonly string[]): string[] {
  return names.map((n) => join(dir, n));
}

/** archive_command that copies into `dir` and renames, so readers never see a half-copied file. */
export function archiveCommand(dir: string): string {
  return `'cp %p ${dir}/.%f.tmp && mv ${dir}/.%f.tmp ${dir}/%f'`;
}
