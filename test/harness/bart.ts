// Test harness: a bart.cfg and catalog in a temp directory, server sections, and running bart.

import assert from 'node:assert/strict';
import { writeFileSync, chownSync } from 'node:fs';
import { join } from 'node:path';
import type { TestCluster } from './cluster.js';
import { REPO_ROOT } from './pg-binaries.js';
import { makeTempDir, removeTree, run, testUserIds, testUserName, type RunResult } from './os.js';

/** A bart.cfg and catalog in a temp directory, for one or more test clusters. */
export interface BartSetup {
  dir: string;
  configPath: string;
  backupPath: string;
  logfile: string;
  /** Rewrites bart.cfg. */
  writeConfig(text: string): void;
  /** Runs `bart -c <config> ...args`. */
  bart(args: string[], env?: NodeJS.ProcessEnv): Promise<RunResult>;
  cleanup(): void;
}

/** A server section for a test cluster (name defaults to `pg<version>`). */
export function serverSection(cluster: TestCluster, name: string, extra: Record<string, string> = {}): string {
  const lines: Record<string, string> = {
    host: cluster.host,
    port: String(cluster.port),
    user: 'postgres',
    cluster_owner: cluster.osUser,
    description: `"test cluster PostgreSQL ${cluster.version}"`,
    ...extra,
  };
  return `[${name}]\n${Object.entries(lines)
    .map(([k, v]) => `${k} = ${v}`)
    .join('\n')}\n`;
}

/** Creates a catalog directory and a bart.cfg with a [BART] section (plus the given extra text). */
export function createBartSetup(globalExtra: Record<string, string> = {}, sections = ''): BartSetup {
  const dir = makeTempDir('bart');
  const backupPath = join(dir, 'backups');
  const configPath = join(dir, 'bart.cfg');
  const logfile = join(dir, 'bart.log');
  const globals: Record<string, string> = {
    bart_host: `${testUserName()}@127.0.0.1`,
    backup_path: backupPath,
    pg_basebackup_path: '/usr/lib/postgresql/15/bin/pg_basebackup',
    logfile,
    scanner_logfile: join(dir, 'bart_scanner.log'),
    bart_socket_directory: dir,
    ...globalExtra,
  };
  const setup: BartSetup = {
    dir,
    configPath,
    backupPath,
    logfile,
    writeConfig(text: string) {
      writeFileSync(configPath, text);
      const ids = testUserIds();
      if (ids) chownSync(configPath, ids.uid, ids.gid);
    },
    bart(args: string[], env: NodeJS.ProcessEnv = {}) {
      // Started as root on purpose: bart must switch to the bart_host user by itself.
      // Run as a DBA runs it: the executable itself, so its shebang (and the environment it sets) is what is tested.
      const bin = join(REPO_ROOT, 'bin', 'bart.js');
      const [file, argv] = process.env.BART_PROF
        ? [process.execPath, ['--cpu-prof', '--cpu-prof-dir=/tmp/prof2', bin]]
        : [bin, []];
      return run(file, [...argv, '-c', configPath, ...args], {
        asTestUser: false,
        env: { ...process.env, ...env },
        cwd: dir,
      });
    },
    cleanup() {
      removeTree(dir);
    },
  };
  setup.writeConfig(
    `[BART]\n${Object.entries(globals)
      .map(([k, v]) => `${k} = ${v}`)
      .join('\n')}\n\n${sections}`,
  );
  return setup;
}

/** One backup as SHOW-BACKUPS --output json lists it (the fields the tests compare). */
export interface ListedBackup {
  id: string;
  name?: string;
  status: string;
  parent?: string;
}

/** Backups of a server in the catalog, from SHOW-BACKUPS --output json. */
export async function listedBackups(setup: BartSetup, server: string): Promise<ListedBackup[]> {
  const r = await setup.bart(['SHOW-BACKUPS', '-s', server, '--output', 'json']);
  assert.equal(r.code, 0, r.stderr);
  const parsed = JSON.parse(r.stdout) as unknown;
  const list = (Array.isArray(parsed) ? parsed : ((parsed as { backups?: unknown[] }).backups ?? [])) as Record<
    string,
    unknown
  >[];
  return list.map((b) => ({
    id: String(b.id ?? b.backupId),
    ...(b.name ? { name: String(b.name) } : {}),
    status: String(b.status),
    ...(b.parent ? { parent: String(b.parent) } : {}),
  }));
}
