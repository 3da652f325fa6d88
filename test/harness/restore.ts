// Test harness: a restore source cluster and catalog, restored clusters started and waited on.

import { chownSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createBartSetup, serverSection, type BartSetup } from './bart.js';
import { TestCluster } from './cluster.js';
import { makeTempDir, removeTree, testUserIds, type RunResult } from './os.js';
import { waitFor } from './wait.js';

/** A cluster archiving into a bart catalog (plain `cp`, so these tests need no INIT), and its bart.cfg. */
export interface RestoreSource {
  cluster: TestCluster;
  setup: BartSetup;
  server: string;
  archivePath: string;
  /** Scratch space for restore targets and tablespaces, removed by destroy(). */
  scratch: string;
  /** Rewrites bart.cfg with one server section for `cluster` (e.g. after pointing at another cluster). */
  configure(cluster: TestCluster, extra?: Record<string, string>): void;
  /** Takes a backup; returns its id. */
  backup(args: string[]): Promise<string>;
  /** Runs bart RESTORE -s <server> with these extra args. */
  restore(args: string[]): Promise<RunResult>;
  /** Waits until `walfile` is in the archive. */
  waitArchived(walfile: string): Promise<void>;
  /** Switches WAL and waits until the closed segment is archived. */
  archiveCurrentWal(cluster?: TestCluster): Promise<void>;
  destroy(): Promise<void>;
}

/** Creates the source cluster and catalog. */
export async function createRestoreSource(version: number, server = 'src'): Promise<RestoreSource> {
  const setup = createBartSetup();
  const scratch = makeTempDir('restore');
  const archivePath = join(setup.backupPath, server, 'archived_wals');
  mkdirSync(archivePath, { recursive: true, mode: 0o700 });
  const ids = testUserIds();
  if (ids)
    for (const d of [setup.backupPath, join(setup.backupPath, server), archivePath]) chownSync(d, ids.uid, ids.gid);
  const baseConfig = readFileSync(setup.configPath, 'utf8');
  let cluster: TestCluster;
  try {
    cluster = await TestCluster.create({
      version,
      conf: { archive_mode: 'on', archive_command: `'cp %p ${archivePath}/%f'` },
    });
  } catch (err) {
    setup.cleanup();
    removeTree(scratch);
    throw err;
  }
  const source: RestoreSource = {
    cluster,
    setup,
    server,
    archivePath,
    scratch,
    configure(c, extra = {}) {
      setup.writeConfig(baseConfig + serverSection(c, server, extra));
    },
    async backup(args) {
      const r = await setup.bart(['BACKUP', '-s', server, ...args]);
      const m = /backup identifier: '(\d+)'/.exec(r.stdout);
      if (r.code !== 0 || !m) throw new Error(`BACKUP ${args.join(' ')} failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
      return m[1]!;
    },
    restore(args) {
      return setup.bart(['RESTORE', '-s', server, ...args]);
    },
    async waitArchived(walfile) {
      await waitFor(`${walfile} to be archived`, () => existsSync(join(archivePath, walfile)), { timeoutMs: 60_000 });
    },
    async archiveCurrentWal(c = cluster) {
      await source.waitArchived(await c.switchWal());
    },
    async destroy() {
      await cluster.destroy();
      setup.cleanup();
      removeTree(scratch);
    },
  };
  source.configure(cluster);
  return source;
}

/** A fresh path under the scratch directory (absent), for a restore target or a tablespace. */
let counter = 0;
export function freshPath(source: RestoreSource, prefix: string): string {
  return join(source.scratch, `${prefix}-${++counter}`);
}

/** Starts a cluster on a restored data directory; the caller destroys it and removes `dataDir`. */
export async function startRestored(version: number, dataDir: string): Promise<TestCluster> {
  return TestCluster.create({ version, dataDir });
}

/** Every path under `dir` with its size, to show that a refused restore changed nothing. */
export function snapshot(dir: string): string[] {
  if (!existsSync(dir)) return ['<absent>'];
  const out: string[] = [`. ${(statSync(dir).mode & 0o777).toString(8)}`];
  const walk = (rel: string) => {
    for (const name of readdirSync(join(dir, rel)).sort()) {
      const p = rel ? `${rel}/${name}` : name;
      const st = statSync(join(dir, p));
      out.push(`${p} ${st.isDirectory() ? 'dir' : st.size}`);
      if (st.isDirectory()) walk(p);
    }
  };
  walk('');
  return out;
}

/** Sorted batch numbers in table `tx` of a cluster. */
export async function batches(cluster: TestCluster): Promise<number[]> {
  const rows = await cluster.query<{ b: number }>('SELECT DISTINCT batch AS b FROM tx ORDER BY 1');
  return rows.map((r) => Number(r.b));
}

/** Waits until a restored cluster has finished recovery and accepts writes. */
export async function waitPromoted(cluster: TestCluster): Promise<void> {
  await waitFor('the end of recovery', async () => (await cluster.scalar('SELECT pg_is_in_recovery()')) !== true, {
    timeoutMs: 60_000,
    details: () => cluster.logTail(),
  });
}

/** Waits until recovery has paused at its target (recovery_target_action = pause). */
export async function waitPaused(cluster: TestCluster): Promise<void> {
  const paused = async () => (await cluster.scalar('SELECT pg_get_wal_replay_pause_state()')) === 'paused';
  await waitFor('recovery to pause', paused, {
    timeoutMs: 60_000,
    details: () => cluster.logTail(),
  });
}
