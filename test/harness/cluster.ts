// Test harness: throwaway PostgreSQL clusters, started, queried and always stopped.

import { execFileSync } from 'node:child_process';
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import pg from 'pg';
import { initCluster } from './cluster-template.js';
import { serverBinDir } from './pg-binaries.js';
import { makeTempDir, removeTree, runOk, testUserIds, testUserName } from './os.js';

/** Options for a throwaway cluster. */
export interface ClusterOptions {
  /** Major version, 14-18 (default 15). */
  version?: number;
  /** Extra postgresql.conf settings. */
  conf?: Record<string, string | number>;
  /** Start the cluster after initdb (default true). */
  start?: boolean;
  /** Use an existing data directory (e.g. a restored backup) instead of running initdb. */
  dataDir?: string;
}

const live = new Set<TestCluster>();
let exitHookInstalled = false;

/** Stops every cluster still running when the test process exits, even after a failure. */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const c of live) c.killSync();
  });
}

/** Finds a free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolvePromise, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolvePromise(port));
    });
  });
}

/**
 * A real PostgreSQL cluster in a temp directory, run by an unprivileged OS user on 127.0.0.1 and a
 * free port. Always call {@link destroy} (or use {@link withCluster}).
 */
export class TestCluster {
  readonly version: number;
  readonly binDir: string;
  /** Directory that holds the data directory, logs and sockets; removed by destroy(). */
  readonly baseDir: string;
  readonly dataDir: string;
  readonly host = '127.0.0.1';
  readonly port: number;
  readonly osUser: string;
  private readonly ownsDataDir: boolean;
  private running = false;

  private constructor(version: number, baseDir: string, dataDir: string, port: number, ownsDataDir: boolean) {
    this.version = version;
    this.binDir = serverBinDir(version);
    this.baseDir = baseDir;
    this.dataDir = dataDir;
    this.port = port;
    this.osUser = testUserName();
    this.ownsDataDir = ownsDataDir;
  }

  /** Creates (initdb -k, copied from a template made once per version) and by default starts a cluster. */
  static async create(opts: ClusterOptions = {}): Promise<TestCluster> {
    installExitHook();
    const version = opts.version ?? 15;
    const baseDir = makeTempDir(`pg${version}`);
    const port = await freePort();
    const dataDir = opts.dataDir ?? join(baseDir, 'data');
    const cluster = new TestCluster(version, baseDir, dataDir, port, !opts.dataDir);
    live.add(cluster);
    try {
      if (!opts.dataDir) {
        await initCluster(version, dataDir, baseDir);
        cluster.writeConf({
          listen_addresses: "'127.0.0.1'",
          port,
          unix_socket_directories: `'${baseDir}'`,
          wal_level: 'replica',
          max_wal_senders: 10,
          shared_buffers: '32MB',
          max_connections: 40,
          fsync: 'off',
          logging_collector: 'off',
          ...(opts.conf ?? {}),
        });
        appendFileSync(
          join(dataDir, 'pg_hba.conf'),
          '\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n',
        );
      } else {
        cluster.writeConf({
          port,
          listen_addresses: "'127.0.0.1'",
          unix_socket_directories: `'${baseDir}'`,
          ...(opts.conf ?? {}),
        });
      }
      if (opts.start !== false) await cluster.start();
    } catch (err) {
      await cluster.destroy();
      throw err;
    }
    return cluster;
  }

  /** Appends settings to postgresql.auto.conf-free postgresql.conf (later lines win). */
  writeConf(settings: Record<string, string | number>): void {
    const lines = Object.entries(settings)
      .map(([k, v]) => `${k} = ${v}`)
      .join('\n');
    appendFileSync(join(this.dataDir, 'postgresql.conf'), `\n${lines}\n`);
  }

  /** Server log, for failure messages. */
  get logFile(): string {
    return join(this.baseDir, `server-${this.port}.log`);
  }

  /** Last lines of the server log. */
  logTail(lines = 40): string {
    if (!existsSync(this.logFile)) return '';
    return readFileSync(this.logFile, 'utf8').split('\n').slice(-lines).join('\n');
  }

  async start(): Promise<void> {
    try {
      await runOk(join(this.binDir, 'pg_ctl'), ['-D', this.dataDir, '-l', this.logFile, '-w', '-t', '120', 'start'], {
        cwd: this.baseDir,
      });
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- server log ---\n${this.logTail()}`);
    }
    this.running = true;
  }

  async stop(mode: 'smart' | 'fast' | 'immediate' = 'fast'): Promise<void> {
    if (!this.running) return;
    await runOk(join(this.binDir, 'pg_ctl'), ['-D', this.dataDir, '-w', '-t', '120', '-m', mode, 'stop'], {
      cwd: this.baseDir,
    });
    this.running = false;
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  async reload(): Promise<void> {
    await this.query('SELECT pg_reload_conf()');
  }

  /** Promotes a standby or a paused recovery and waits until it accepts writes. */
  async promote(): Promise<void> {
    await runOk(join(this.binDir, 'pg_ctl'), ['-D', this.dataDir, '-w', 'promote'], { cwd: this.baseDir });
  }

  get isRunning(): boolean {
    return this.running;
  }

  /** Connection settings for pg clients and for bart.cfg. */
  connectionConfig(database = 'postgres'): pg.ClientConfig {
    return { host: this.host, port: this.port, user: 'postgres', database };
  }

  /** Runs SQL and returns the rows. */
  async query<T extends Record<string, unknown> = Record<string, unknown>>(
    sql: string,
    params: unknown[] = [],
    database = 'postgres',
  ): Promise<T[]> {
    const client = new pg.Client(this.connectionConfig(database));
    client.on('error', () => undefined);
    await client.connect();
    try {
      const result = await client.query(sql, params);
      const results = Array.isArray(result) ? result : [result];
      return (results[results.length - 1]?.rows ?? []) as T[];
    } finally {
      await client.end();
    }
  }

  /** Runs SQL and returns the first column of the first row. */
  async scalar(sql: string, params: unknown[] = [], database = 'postgres'): Promise<unknown> {
    const rows = await this.query(sql, params, database);
    const first = rows[0];
    return first ? Object.values(first)[0] : undefined;
  }

  /** Forces a WAL segment switch and returns the name of the segment that was closed. */
  async switchWal(): Promise<string> {
    // Make sure there is something to switch away from, otherwise pg_switch_wal is a no-op.
    await this.query('SELECT txid_current()');
    const rows = await this.query<{ walfile: string }>('SELECT pg_walfile_name(pg_switch_wal()) AS walfile');
    return rows[0]!.walfile;
  }

  /** Stops the cluster at once without waiting (used at process exit). */
  killSync(): void {
    if (!this.running) return;
    try {
      const ids = testUserIds();
      execFileSync(join(this.binDir, 'pg_ctl'), ['-D', this.dataDir, '-m', 'immediate', '-w', 'stop'], {
        stdio: 'ignore',
        ...(ids ? { uid: ids.uid, gid: ids.gid } : {}),
      });
    } catch {
      /* already gone */
    }
    this.running = false;
  }

  /** Stops the cluster and deletes its files. */
  async destroy(): Promise<void> {
    try {
      if (this.running) await this.stop('immediate');
    } catch {
      this.killSync();
    }
    live.delete(this);
    removeTree(this.baseDir);
    if (!this.ownsDataDir) return;
  }
}

/** Runs `fn` with a fresh cluster and always destroys it afterwards. */
export async function withCluster<T>(opts: ClusterOptions, fn: (cluster: TestCluster) => Promise<T>): Promise<T> {
  const cluster = await TestCluster.create(opts);
  try {
    return await fn(cluster);
  } finally {
    await cluster.destroy();
  }
}
