// A restored data directory started as a private, throwaway server (VERIFY-RESTORE), and its checks.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import type pg from 'pg';
import { BartError, errorMessage } from '../util/errors.js';
import { shellQuote } from '../util/shell-quote.js';
import { connect, queryValue } from './connection.js';
import type { ServerBinaries } from './server-binaries.js';
import { LocalHost } from '../hosts/local/data-host.js';
import { RELSEG_BLOCKS } from './constants.js';
import { CHECK_EVERY_PAGE, checkFilePages, describeBlocks } from './page-checksum.js';
import { parseRelationPath } from './relation-file.js';

/** Output kept of a child process: enough for a reason, bounded however much it prints. */
const OUTPUT_LIMIT = 64 * 1024;

/** What a finished child process said. */
interface ChildResult {
  code: number | null;
  output: string;
}

/** Runs a program, keeping the first {@link OUTPUT_LIMIT} bytes of its stdout and stderr; killed on abort. */
function runChild(cmd: string, args: string[], signal?: AbortSignal): Promise<ChildResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(signal ? { signal } : {}) });
    let output = '';
    const keep = (d: Buffer) => {
      if (output.length < OUTPUT_LIMIT) output += d.toString();
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.on('error', reject);
    child.on('close', (code) => resolvePromise({ code, output }));
  });
}

/** A free TCP port on 127.0.0.1 (taken and released: another program may grab it before we start). */
export function freeLocalPort(): Promise<number> {
  return new Promise((resolvePromise, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolvePromise(port));
    });
  });
}

/** Where a scratch server lives. */
export interface ScratchClusterSpec {
  bins: ServerBinaries;
  /** The restored data directory. */
  dataDir: string;
  /** A private directory (0700) for the socket, the log and the pg_hba.conf we start with. */
  privateDir: string;
  port: number;
  /** The role to connect as (a superuser of the backed-up cluster). */
  user: string;
}

/** A started scratch server. */
export class ScratchCluster {
  readonly logFile: string;
  private started = false;

  constructor(readonly spec: ScratchClusterSpec) {
    this.logFile = join(spec.privateDir, 'server.log');
  }

  /**
   * Starts the server and waits until recovery has ended and it accepts connections. Settings on
   * the command line override the restored ones that would not work or not be safe here: no
   * archiving, no restore_command (the backup holds its WAL from start to stop, and nothing from the
   * archive may hide a gap in it), only our private socket (trusted, in a 0700 directory; TCP on
   * 127.0.0.1 is refused by the pg_hba.conf used), no preloaded libraries or SSL files of the source
   * host, small shared memory.
   */
  async start(signal: AbortSignal): Promise<void> {
    const { bins, dataDir, privateDir, port } = this.spec;
    const hba = join(privateDir, 'pg_hba.conf');
    await writeFile(hba, 'local all all trust\n', { mode: 0o600 });
    // Debian keeps postgresql.conf outside the data directory: a backup of such a cluster has none.
    if (!existsSync(join(dataDir, 'postgresql.conf'))) {
      await writeFile(join(dataDir, 'postgresql.conf'), '', { mode: 0o600 });
    }
    const settings: [string, string][] = [
      ['port', String(port)],
      ['listen_addresses', '127.0.0.1'],
      ['unix_socket_directories', privateDir],
      ['hba_file', hba],
      ['archive_mode', 'off'],
      ['restore_command', 'false'],
      ['shared_preload_libraries', ''],
      ['ssl', 'off'],
      ['shared_buffers', '128MB'],
      ['huge_pages', 'off'],
      ['logging_collector', 'off'],
      ['fsync', 'off'],
      ['cluster_name', 'pgbart-verify-restore'],
    ];
    const options = settings.map(([k, v]) => `-c ${shellQuote(`${k}=${v}`)}`).join(' ');
    this.started = true;
    // pg_ctl -w returns once the server accepts connections (in hot standby, or promoted) or has died.
    const args = ['start', '-w', '-t', '86400', '-D', dataDir, '-l', this.logFile, '-o', options];
    const started = await runChild(bins.pgCtl, args, signal);
    signal.throwIfAborted();
    if (started.code !== 0) throw new BartError(`the restored cluster did not start: ${this.logTail()}`);
    // Recovery to the backup's end then promotes (recovery_target_action); wait for that.
    for (;;) {
      signal.throwIfAborted();
      if (!this.postmasterAlive()) {
        throw new BartError(`the restored cluster stopped during recovery: ${this.logTail()}`);
      }
      const inRecovery = await this.withClient('postgres', (c) => queryValue(c, 'SELECT pg_is_in_recovery()')).catch(
        () => undefined,
      );
      if (inRecovery === 'false') return;
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** True while the postmaster named in postmaster.pid runs. */
  private postmasterAlive(): boolean {
    let pid: number;
    try {
      pid = Number(readFileSync(join(this.spec.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
      process.kill(pid, 0);
    } catch {
      return false;
    }
    // Once pg_ctl has exited the postmaster's parent is init, which in some containers never reaps it:
    // a zombie has ended.
    try {
      return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
    } catch {
      return true;
    }
  }

  /** The server log's last lines that say what went wrong, on one line. */
  logTail(): string {
    let text = '';
    try {
      text = readFileSync(this.logFile, 'utf8');
    } catch {
      return 'no server log';
    }
    const lines = text.split('\n').filter((l) => l.trim() !== '');
    const bad = lines.filter((l) => /\b(FATAL|PANIC|ERROR):/.test(l));
    return (bad.length > 0 ? bad.slice(-3) : lines.slice(-3)).join(' | ') || 'empty server log';
  }

  /** Runs `fn` with a connection to `database` over the private socket. */
  async withClient<T>(database: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
    const client = await connect({
      host: this.spec.privateDir,
      port: this.spec.port,
      user: this.spec.user,
      database,
      applicationName: 'pgbart VERIFY-RESTORE',
    });
    try {
      return await fn(client);
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  /** Stops the server (fast, then immediate if that does not work); nothing when it never started. */
  async stop(): Promise<void> {
    if (!this.started) return;
    const { pgCtl } = this.spec.bins;
    const fast = await runChild(pgCtl, ['stop', '-w', '-t', '120', '-m', 'fast', '-D', this.spec.dataDir]);
    if (fast.code !== 0 && this.postmasterAlive()) {
      await runChild(pgCtl, ['stop', '-w', '-t', '60', '-m', 'immediate', '-D', this.spec.dataDir]);
    }
    this.started = !!this.postmasterAlive() && this.started;
  }

  /** Last resort at process exit: stop at once, synchronously. */
  stopSync(): void {
    if (!this.started || !this.postmasterAlive()) return;
    try {
      execFileSync(this.spec.bins.pgCtl, ['stop', '-w', '-t', '30', '-m', 'immediate', '-D', this.spec.dataDir], {
        stdio: 'ignore',
      });
    } catch {
      // Nothing more can be done while exiting.
    }
  }
}

/** What the logical check of a started cluster found. */
export interface LogicalCheck {
  ok: boolean;
  /** `amcheck: 5 databases` or `table scan: 3 databases, 25 tables (amcheck not available: ...)`. */
  summary: string;
  /** The first problems found. */
  problems: string[];
}

/**
 * pg_amcheck's report as one problem per line: it names the relation on one line (`btree index
 * "db.public.a_pkey":`) and what is wrong on the indented lines after it.
 */
function amcheckProblems(output: string): string[] {
  const problems: string[] = [];
  for (const line of output.split('\n')) {
    if (line.trim() === '') continue;
    if (/^\s/.test(line) && problems.length > 0) problems[problems.length - 1] += ` ${line.trim()}`;
    else problems.push(line.trim());
  }
  return problems;
}

/** Databases that accept connections (what pg_amcheck --all checks). */
async function databases(cluster: ScratchCluster): Promise<string[]> {
  return cluster.withClient('postgres', async (c) => {
    const r = await c.query<{ datname: string }>('SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname');
    return r.rows.map((row) => row.datname);
  });
}

/**
 * Checks every database: `pg_amcheck --all --heapallindexed --install-missing` when pg_amcheck and the
 * amcheck extension are there, else reads every row of every table (`COPY ... TO '/dev/null'`,
 * which detoasts values and verifies page checksums as pages are read), and says why.
 */
export async function checkDatabases(
  cluster: ScratchCluster,
  jobs: number,
  signal: AbortSignal,
): Promise<LogicalCheck> {
  const dbs = await databases(cluster);
  const available = await cluster.withClient('postgres', (c) =>
    queryValue(c, "SELECT count(*) FROM pg_available_extensions WHERE name = 'amcheck'"),
  );
  const { pgAmcheck } = cluster.spec.bins;
  const missing = !pgAmcheck
    ? 'no pg_amcheck on this host'
    : available !== '1'
      ? `the amcheck extension is not installed for PostgreSQL ${cluster.spec.bins.major}`
      : undefined;
  if (missing === undefined) {
    const { privateDir, port, user } = cluster.spec;
    const args = ['--host', privateDir, '--port', String(port), '--username', user, '--no-password', '--all'];
    args.push('--heapallindexed', '--install-missing', '--jobs', String(Math.max(1, jobs)));
    const r = await runChild(pgAmcheck!, args, signal);
    if (r.code === 0) return { ok: true, summary: `amcheck: ${dbs.length} databases`, problems: [] };
    return { ok: false, summary: `amcheck: ${dbs.length} databases`, problems: amcheckProblems(r.output).slice(0, 20) };
  }
  let tables = 0;
  const problems: string[] = [];
  for (const db of dbs) {
    signal.throwIfAborted();
    await cluster.withClient(db, async (c) => {
      const r = await c.query<{ name: string }>(
        `SELECT format('%I.%I', n.nspname, c.relname) AS name
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('r', 'm') AND c.relispopulated AND c.relpersistence <> 't' ORDER BY 1`,
      );
      for (const { name } of r.rows) {
        signal.throwIfAborted();
        tables++;
        try {
          await c.query(`COPY (SELECT * FROM ONLY ${name}) TO '/dev/null'`);
        } catch (err) {
          problems.push(`database ${db}, table ${name}: ${errorMessage(err)}`);
        }
      }
    });
  }
  const summary = `table scan: ${dbs.length} databases, ${tables} tables (amcheck not available: ${missing})`;
  return { ok: problems.length === 0, summary, problems: problems.slice(0, 20) };
}

/** What the page checksum check of a stopped cluster found. */
export interface ChecksumCheck {
  /** Whether the check was done: always (pgbart verifies pages itself); kept for readers of the JSON report. */
  checked: boolean;
  ok: boolean;
  /** Relation files checked. */
  files: number;
  /** Pages checked (new, all-zero pages carry no checksum and are not). */
  pages: number;
  /** Pages that failed. */
  failedPages: number;
  /** A line per failing file (path and blocks), the first {@link MAX_LISTED}. */
  problems: string[];
}

/** Files listed with failing pages, and blocks listed per file. */
const MAX_LISTED = 20;

/**
 * Verifies the page checksum of every page of every relation file of the stopped, cleanly shut down
 * cluster in `dataDir` and its tablespaces (`pg_tblspc/<oid>`, links or in-place directories), with
 * pgbart's own verifier: no pg_checksums of the server's version needed. Files are streamed through
 * the local data host. The cluster is stopped and consistent, so no page is skipped for its LSN.
 */
export async function checkPageChecksums(dataDir: string, signal: AbortSignal): Promise<ChecksumCheck> {
  const host = new LocalHost();
  const result: ChecksumCheck = { checked: true, ok: true, files: 0, pages: 0, failedPages: 0, problems: [] };
  /** Checks one file found under `root`: `archive` is `base` for the data directory, else the tablespace OID. */
  const check = async (root: string, archive: string, path: string, name: string): Promise<void> => {
    const rel = parseRelationPath(archive, path);
    if (!rel) return;
    const found = await checkFilePages(host, join(root, path), rel.segment * RELSEG_BLOCKS, CHECK_EVERY_PAGE, signal);
    if (!found) return;
    result.files++;
    result.pages += found.checked;
    if (found.bad.length === 0) return;
    result.ok = false;
    result.failedPages += found.bad.length;
    if (result.problems.length < MAX_LISTED) {
      result.problems.push(`${name}: ${describeBlocks(found.bad, MAX_LISTED)} (checksum mismatch)`);
    }
  };
  for await (const e of host.walk(dataDir)) {
    const spc = /^pg_tblspc\/(\d+)(?:\/(.*))?$/.exec(e.path);
    if (!spc) {
      if (e.type === 'file') await check(dataDir, 'base', e.path, e.path);
    } else if (e.type === 'file' && spc[2] !== undefined) {
      // An in-place tablespace (allow_in_place_tablespaces): a directory inside pg_tblspc.
      await check(join(dataDir, 'pg_tblspc', spc[1]!), spc[1]!, spc[2], e.path);
    } else if (e.type === 'symlink' && e.linkTarget !== undefined) {
      const root = resolve(dataDir, 'pg_tblspc', e.linkTarget);
      for await (const t of host.walk(root)) {
        if (t.type === 'file') await check(root, spc[1]!, t.path, `${e.path}/${t.path}`);
      }
    }
  }
  return result;
}
