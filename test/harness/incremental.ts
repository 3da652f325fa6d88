// Test harness: incremental sources, content snapshots, backups and restores checked against them.

import { PosixStorage } from '../../src/storage/posix/posix-storage.js';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readManifest } from '../../src/catalog/manifest.js';
import type { TestCluster } from './cluster.js';
import { tableFingerprints } from './load.js';
import { removeTree, run, type RunResult } from './os.js';
import { clientTool } from './pg-binaries.js';
import { createRestoreSource, freshPath, startRestored, waitPromoted, type RestoreSource } from './restore.js';

/** A restore source whose server allows incremental backups (MBMs are scanned on the spot: no daemon). */
export async function createIncrementalSource(
  version: number,
  extra: Record<string, string> = {},
): Promise<RestoreSource> {
  const src = await createRestoreSource(version);
  src.configure(src.cluster, { allow_incremental_backups: 'enabled', mbm_scan_timeout: '2', ...extra });
  return src;
}

/**
 * What a cluster holds, database by database: each permanent table's row count and content hash,
 * each permanent sequence's state (unlogged ones restart after a restore), and the large objects' content. Compared between a source at backup time
 * and the restored cluster.
 */
export async function contentSnapshot(cluster: TestCluster): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const dbs = await cluster.query<{ datname: string }>('SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1');
  for (const { datname } of dbs) {
    for (const [t, v] of Object.entries(await tableFingerprints(cluster, datname))) out[`${datname}:${t}`] = v;
    const seqs = await cluster.query<{ name: string; v: string }>(
      `SELECT format('%I.%I', s.schemaname, s.sequencename) AS name, coalesce(s.last_value::text, 'null') AS v FROM pg_sequences s
       JOIN pg_class c ON c.oid = format('%I.%I', s.schemaname, s.sequencename)::regclass
       WHERE c.relpersistence = 'p' ORDER BY 1`,
      [],
      datname,
    );
    for (const s of seqs) out[`${datname}:seq:${s.name}`] = s.v;
    const lo = await cluster.query<{ n: string; h: string | null }>(
      "SELECT count(*)::text AS n, md5(string_agg(oid::text || ':' || md5(lo_get(oid)), ',' ORDER BY oid)) AS h FROM pg_largeobject_metadata",
      [],
      datname,
    );
    if (lo[0]!.n !== '0') out[`${datname}:largeobjects`] = `${lo[0]!.n}:${lo[0]!.h}`;
  }
  return out;
}

/** Takes a backup and returns its id; with a parent, an incremental. */
export async function takeBackup(src: RestoreSource, parent?: string, args: string[] = []): Promise<string> {
  return src.backup([...(parent ? ['--parent', parent] : []), ...args]);
}

/** Runs bart BACKUP and returns the raw result (for refusals). */
export function tryBackup(src: RestoreSource, args: string[]): Promise<RunResult> {
  return src.setup.bart(['BACKUP', '-s', src.server, ...args]);
}

/** Options of {@link restoreAndCheck}. */
export interface RestoreCheck {
  /**
   * Extra RESTORE arguments (default: --target-immediate, promote, on the backup's own timeline: the
   * archive may hold the history of a newer timeline that forked off earlier, see the timeline test).
   */
  targetArgs?: string[];
  /** Run pg_amcheck on every database (slower). */
  amcheck?: boolean;
  /** Tablespace mapping to pass. */
  tablespaceMap?: string;
  /** Inspect the restored cluster before it is destroyed. */
  inspect?: (restored: TestCluster, dataDir: string) => Promise<void>;
}

/**
 * Restores backup `id` (to the moment it became consistent unless told otherwise), starts it,
 * and asserts it holds exactly `expected`; runs pg_amcheck when asked. Cleans up either way.
 */
export async function restoreAndCheck(
  src: RestoreSource,
  id: string,
  expected: Record<string, string>,
  what: string,
  opts: RestoreCheck = {},
): Promise<void> {
  const path = freshPath(src, 'incr');
  const args = [
    '-i',
    id,
    '-p',
    path,
    '-c',
    ...(opts.targetArgs ?? ['--target-immediate', '--target-action', 'promote', '-t', 'current']),
  ];
  if (opts.tablespaceMap) args.push('--tablespace-map', opts.tablespaceMap);
  const r = await src.restore(args);
  assert.equal(r.code, 0, `${what}: RESTORE failed\n${r.stdout}\n${r.stderr}`);
  let restored: TestCluster | undefined;
  try {
    restored = await startRestored(src.cluster.version, path);
    await waitPromoted(restored);
    assert.deepEqual(await contentSnapshot(restored), expected, `${what}: restored content differs from the source`);
    if (opts.amcheck) {
      const check = await run(clientTool('pg_amcheck'), [
        '-h',
        restored.host,
        '-p',
        String(restored.port),
        '-U',
        'postgres',
        '--all',
        '--install-missing',
        '--heapallindexed',
      ]);
      assert.equal(check.code, 0, `${what}: pg_amcheck failed: ${check.stdout}${check.stderr}`);
    }
    await opts.inspect?.(restored, path);
  } finally {
    await restored?.destroy();
    removeTree(path);
  }
}

/** The manifest entries of a backup (file entries only), by archive and path. */
export async function manifestEntries(
  src: RestoreSource,
  id: string,
): Promise<Map<string, { size: number; incr?: { length: number; runs: Array<[number, number]> } }>> {
  const out = new Map<string, { size: number; incr?: { length: number; runs: Array<[number, number]> } }>();
  for await (const line of readManifest(
    new PosixStorage(join(src.setup.backupPath, src.server, id)),
    'manifest.jsonl',
  )) {
    if (line.kind !== 'file' || line.entry.type !== 'file') continue;
    out.set(
      `${line.entry.archive}:${line.entry.path}`,
      line.entry as { size: number; incr?: { length: number; runs: Array<[number, number]> } },
    );
  }
  return out;
}

/** Path of a relation's main fork relative to the data directory, and its database OID. */
export async function relationPath(cluster: TestCluster, table: string, database = 'postgres'): Promise<string> {
  return String(await cluster.scalar(`SELECT pg_relation_filepath('${table}')`, [], database));
}
