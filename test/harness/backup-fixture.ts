// Test harness: a cluster archiving its WAL into a bart catalog, and the bart.cfg describing it.

import { chownSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TestCluster, type ClusterOptions } from './cluster.js';
import { createBartSetup, serverSection, type BartSetup } from './bart.js';
import { testUserIds } from './os.js';

/** A running cluster that archives its WAL into a bart catalog, and the bart.cfg describing it. */
export interface BackupFixture {
  cluster: TestCluster;
  setup: BartSetup;
  server: string;
  archivePath: string;
  /** Backup directory of a completed backup. */
  backupDir(id: string): string;
  destroy(): Promise<void>;
}

/**
 * Creates a cluster whose archive_command copies WAL into `backup_path/<server>/archived_wals`
 * (a plain `cp`, so backup tests do not depend on INIT), plus a bart.cfg with one server section.
 */
export async function createBackupFixture(
  opts: ClusterOptions & {
    server?: string;
    serverExtra?: Record<string, string>;
    globalExtra?: Record<string, string>;
  } = {},
): Promise<BackupFixture> {
  const server = opts.server ?? 'pg';
  const setup = createBartSetup(opts.globalExtra ?? {});
  const archivePath = join(setup.backupPath, server, 'archived_wals');
  mkdirSync(archivePath, { recursive: true, mode: 0o700 });
  const ids = testUserIds();
  if (ids)
    for (const d of [setup.backupPath, join(setup.backupPath, server), archivePath]) chownSync(d, ids.uid, ids.gid);
  let cluster: TestCluster;
  try {
    cluster = await TestCluster.create({
      ...opts,
      conf: {
        archive_mode: 'on',
        archive_command: `'test ! -f ${archivePath}/%f && cp %p ${archivePath}/%f'`,
        ...(opts.conf ?? {}),
      },
    });
  } catch (err) {
    setup.cleanup();
    throw err;
  }
  setup.writeConfig(readFileSync(setup.configPath, 'utf8') + serverSection(cluster, server, opts.serverExtra ?? {}));
  return {
    cluster,
    setup,
    server,
    archivePath,
    backupDir: (id) => join(setup.backupPath, server, id),
    async destroy() {
      await cluster.destroy();
      setup.cleanup();
    },
  };
}

/** The backup identifier a successful `bart BACKUP` printed. */
export function backupIdFrom(stdout: string): string {
  const m = /backup identifier: '(\d+)'/.exec(stdout);
  if (!m) throw new Error(`no backup identifier in output:\n${stdout}`);
  return m[1]!;
}
