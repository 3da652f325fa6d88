// Demo: npm run demo, a guided run of every bart command on a throwaway local PostgreSQL cluster.

/**
 * `npm run demo`: a guided run of pgbart on a throwaway local PostgreSQL 15 cluster. It writes a
 * bart.cfg, then runs each `bart` command a DBA would, printing the command and what it shows.
 * Everything it creates (cluster, catalog, config) is removed at the end, also on failure or Ctrl-C.
 *
 * It goes from configuration and WAL archiving through full and incremental backups to a
 * point-in-time restore that brings back deleted rows, checked against the source, and ends with a
 * VERIFY-RESTORE that proves the incremental backup by starting it.
 */
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createBartSetup, serverSection, type BartSetup } from '../test/harness/bart.js';
import { TestCluster } from '../test/harness/cluster.js';
import { REPO_ROOT } from '../test/harness/pg-binaries.js';

/** What every step can use. */
export interface DemoContext {
  cluster: TestCluster;
  /** bart.cfg's [BART] section, to which steps append the server section they need. */
  baseConfig: string;
  setup: BartSetup;
  /** Section name of the demo server in bart.cfg. */
  server: string;
  /** Runs `bart ...args`, printing the command line and its output; fails the demo on an unexpected exit status. */
  bart(args: string[], expectExit?: number): Promise<string>;
  /** Runs `bart-scanner ...args` the same way. */
  scanner(args: string[], expectExit?: number): Promise<string>;
  /** Prints a shell-like line for something the demo does outside bart. */
  say(text: string): void;
  /** Values later steps need (backup ids, the restored cluster). */
  state: { fullId?: string; incrementalId?: string; restored?: TestCluster; expected?: string };
}

/** One step of the guided run. */
export interface DemoStep {
  title: string;
  run(ctx: DemoContext): Promise<void>;
}

const PG_VERSION = 15;

/** The guided run, in order. */
export const steps: DemoStep[] = [
  {
    title: 'The configuration: one [BART] section and one server section (bart.cfg)',
    async run(ctx) {
      ctx.say(`$ cat ${ctx.setup.configPath}`);
      process.stdout.write(readFileSync(ctx.setup.configPath, 'utf8'));
      ctx.say(`(the demo exports BART_CONFIG=${ctx.setup.configPath}, so every bart below finds it)`);
    },
  },
  {
    title: 'Check the [BART] section',
    async run(ctx) {
      await ctx.bart(['CHECK-CONFIG']);
    },
  },
  {
    title: 'Before INIT: CHECK-CONFIG says what is missing (archiving is off on a new cluster)',
    async run(ctx) {
      await ctx.bart(['CHECK-CONFIG', '-s', ctx.server], 1);
    },
  },
  {
    title: 'INIT: create the catalog and configure WAL archiving (archive_mode, archive_command)',
    async run(ctx) {
      await ctx.bart(['INIT', '-s', ctx.server]);
    },
  },
  {
    title: 'Restart PostgreSQL as INIT asked (archive_mode needs a restart)',
    async run(ctx) {
      ctx.say(`$ pg_ctl restart -D ${ctx.cluster.dataDir}`);
      await ctx.cluster.restart();
      ctx.say('server restarted');
    },
  },
  {
    title: 'CHECK-CONFIG: every check passes, including WAL archiving end to end',
    async run(ctx) {
      await ctx.bart(['CHECK-CONFIG', '-s', ctx.server]);
    },
  },
  {
    title: 'SHOW-SERVERS',
    async run(ctx) {
      await ctx.bart(['SHOW-SERVERS', '-s', ctx.server]);
    },
  },
  {
    title: 'Write some data and switch WAL segments: archive_command stores each finished segment',
    async run(ctx) {
      ctx.say('$ psql -c "CREATE TABLE demo AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 100000) g"');
      await ctx.cluster.query(
        'CREATE TABLE demo AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 100000) g',
      );
      // Sets the rows' hint bits now: with data checksums, the first scan that sets them WAL-logs every
      // page (full-page images), which an incremental backup would then rightly copy.
      ctx.say('$ psql -c "VACUUM demo"');
      await ctx.cluster.query('VACUUM demo');
      const archiveDir = join(ctx.setup.backupPath, ctx.server, 'archived_wals');
      for (let i = 0; i < 2; i++) {
        ctx.say('$ psql -c "SELECT pg_switch_wal()"');
        const segment = await ctx.cluster.switchWal();
        ctx.say(`closed segment ${segment}; waiting for it in ${archiveDir}`);
        await waitForFile(join(archiveDir, segment), 30);
      }
    },
  },
  {
    title: 'SHOW-SERVERS again: NUMBER OF ARCHIVES and DISK UTILIZATION have grown',
    async run(ctx) {
      await ctx.bart(['SHOW-SERVERS', '-s', ctx.server]);
    },
  },
  {
    title: 'ARCHIVE-GET, the restore_command side: fetch an archived segment; a missing one exits 1 quietly',
    async run(ctx) {
      const archiveDir = join(ctx.setup.backupPath, ctx.server, 'archived_wals');
      const archived = readdirSync(archiveDir)
        .filter((f) => /^[0-9A-F]{24}$/.test(f))
        .sort();
      const last = archived[archived.length - 1]!;
      // The segment after the last archived one is the one PostgreSQL is still writing: not archived yet.
      const next = `${last.slice(0, 16)}${(parseInt(last.slice(16), 16) + 1).toString(16).toUpperCase().padStart(8, '0')}`;
      const target = join(ctx.setup.dir, 'RECOVERYXLOG');
      await ctx.bart(['ARCHIVE-GET', '-s', ctx.server, last, target]);
      ctx.say(`(${target} now holds the segment: ${statSync(target).size} bytes)`);
      await ctx.bart(['ARCHIVE-GET', '-s', ctx.server, next, target], 1);
    },
  },
  {
    title:
      'Enable block-level incremental backups: bart-scanner turns each archived WAL file into a modified block map',
    async run(ctx) {
      ctx.setup.writeConfig(
        `${ctx.baseConfig}\n${serverSection(ctx.cluster, ctx.server, { description: '"pgbart demo server"', allow_incremental_backups: 'enabled' })}`,
      );
      ctx.say(`(bart.cfg: [${ctx.server}] now has allow_incremental_backups = enabled)`);
      await ctx.scanner(['--daemon']);
    },
  },
  {
    title: 'BACKUP: a hot full backup, tar format, LZ4-compressed, every file checksummed',
    async run(ctx) {
      const out = await ctx.bart([
        'BACKUP',
        '-s',
        ctx.server,
        '--compress',
        'lz4',
        '--backup-name',
        'full_%year%month%day',
      ]);
      ctx.state.fullId = backupId(out);
    },
  },
  {
    title: 'Change 1% of the rows, then BACKUP --parent: an incremental copies only the blocks the WAL says changed',
    async run(ctx) {
      const sql = "UPDATE demo SET v = 'changed' WHERE id BETWEEN 50001 AND 51000";
      ctx.say(`$ psql -c "${sql}"`);
      await ctx.cluster.query(sql);
      const out = await ctx.bart([
        'BACKUP',
        '-s',
        ctx.server,
        '--parent',
        ctx.state.fullId!,
        '--compress',
        'lz4',
        '--backup-name',
        'incr_%hour%minute%second',
      ]);
      ctx.state.incrementalId = backupId(out);
    },
  },
  {
    title: 'SHOW-BACKUPS (the incremental names its parent) and VERIFY-CHKSUM (every file of every backup)',
    async run(ctx) {
      await ctx.bart(['SHOW-BACKUPS', '-s', ctx.server]);
      await ctx.bart(['VERIFY-CHKSUM', '-s', ctx.server]);
    },
  },
  {
    title: 'A restore point, then a mistake: every row deleted (the WAL is archived as usual)',
    async run(ctx) {
      const insert = 'INSERT INTO demo SELECT g, md5(g::text) FROM generate_series(100001, 100500) g';
      ctx.say(`$ psql -c "${insert}"`);
      await ctx.cluster.query(insert);
      ctx.say(`$ psql -c "SELECT pg_create_restore_point('before_mistake')"`);
      await ctx.cluster.query("SELECT pg_create_restore_point('before_mistake')");
      ctx.state.expected = await tableDigest(ctx.cluster);
      ctx.say(`(rows and content hash of table demo at the restore point: ${ctx.state.expected})`);
      ctx.say('$ psql -c "DELETE FROM demo"   -- the mistake');
      await ctx.cluster.query('DELETE FROM demo');
      ctx.say('$ psql -c "SELECT pg_switch_wal()"');
      const segment = await ctx.cluster.switchWal();
      await waitForFile(join(ctx.setup.backupPath, ctx.server, 'archived_wals', segment), 30);
    },
  },
  {
    title: 'RESTORE the incremental (full backup + blocks) with point-in-time recovery to the restore point',
    async run(ctx) {
      const path = join(ctx.setup.dir, 'restored');
      await ctx.bart([
        'RESTORE',
        '-s',
        ctx.server,
        '-i',
        ctx.state.incrementalId!,
        '-p',
        path,
        '--target-name',
        'before_mistake',
        '--target-action',
        'promote',
      ]);
      ctx.say(`$ pg_ctl start -D ${path}   (on another port)`);
      const restored = await TestCluster.create({ version: PG_VERSION, dataDir: path });
      ctx.state.restored = restored;
      const deadline = Date.now() + 60_000;
      while ((await restored.scalar('SELECT pg_is_in_recovery()')) === true) {
        if (Date.now() > deadline) throw new Error('the restored cluster is still in recovery after 60 s');
        await new Promise((r) => setTimeout(r, 200));
      }
      const got = await tableDigest(restored);
      ctx.say(`restored cluster on port ${restored.port}: table demo holds ${got}`);
      if (got !== ctx.state.expected)
        throw new Error(
          `the restored data differs from the source at the restore point: ${got} vs ${ctx.state.expected}`,
        );
      ctx.say('(identical to the source at the restore point: the deleted rows are back)');
    },
  },
  {
    title: 'MANAGE -l lists what retention would remove; DELETE -n shows a backup and its incremental descendants',
    async run(ctx) {
      await ctx.bart(['MANAGE', '-s', ctx.server, '-l']);
      await ctx.bart(['DELETE', '-s', ctx.server, '-i', ctx.state.fullId!, '-n']);
    },
  },
  {
    title: 'Stop bart-scanner',
    async run(ctx) {
      await ctx.scanner(['STOP']);
    },
  },
  {
    title: 'VERIFY-RESTORE: prove the incremental backup by restoring it (with its chain), starting it and checking it',
    async run(ctx) {
      ctx.say('(a scratch copy under $TMPDIR on a free port; pg_amcheck on every database; page checksums; removed)');
      await ctx.bart(['VERIFY-RESTORE', '-s', ctx.server, '-i', ctx.state.incrementalId!]);
      ctx.say('(the result is recorded with the backup: SHOW-BACKUPS -t shows it as LAST VERIFY-RESTORE)');
    },
  },
];

/** The backup identifier BACKUP prints. */
function backupId(output: string): string {
  const m = /backup identifier: '(\d+)'/.exec(output);
  if (!m) throw new Error('BACKUP printed no backup identifier');
  return m[1]!;
}

/** Row count and content hash of table demo, compared between source and restored cluster. */
async function tableDigest(cluster: TestCluster): Promise<string> {
  const rows = await cluster.query<{ n: string; h: string }>(
    "SELECT count(*)::text AS n, md5(string_agg(id || ':' || v, ',' ORDER BY id)) AS h FROM demo",
  );
  return `${rows[0]!.n} rows, md5 ${rows[0]!.h}`;
}

async function waitForFile(path: string, seconds: number): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    try {
      statSync(path);
      return;
    } catch {
      if (Date.now() > deadline) throw new Error(`${path} did not appear within ${seconds} s`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

function banner(text: string): void {
  process.stdout.write(`\n=== ${text} ===\n`);
}

async function main(): Promise<number> {
  let cluster: TestCluster | undefined;
  // Kept so that Ctrl-C during initdb still waits for the cluster and removes it.
  let creating: Promise<TestCluster> | undefined;
  let setup: BartSetup | undefined;
  let cleaning: Promise<void> | undefined;
  const state: DemoContext['state'] = {};
  const cleanup = (): Promise<void> => {
    cleaning ??= (async () => {
      if (setup) {
        // The scanner daemon, if a step started it and the demo failed before STOP (harmless otherwise).
        spawnSync(process.execPath, [join(REPO_ROOT, 'bin', 'bart-scanner.js'), '-c', setup.configPath, 'STOP'], {
          stdio: 'ignore',
        });
      }
      await state.restored?.destroy().catch(() => undefined);
      const c = cluster ?? (await creating?.catch(() => undefined));
      await c?.destroy().catch(() => undefined);
      setup?.cleanup();
    })();
    return cleaning;
  };
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      process.stdout.write(`\n${signal}: removing the demo cluster and catalog...\n`);
      void cleanup().then(() => process.exit(130));
    });
  }

  try {
    banner(`Creating a throwaway PostgreSQL ${PG_VERSION} cluster`);
    creating = TestCluster.create({ version: PG_VERSION });
    cluster = await creating;
    process.stdout.write(
      `PostgreSQL ${PG_VERSION} runs on ${cluster.host}:${cluster.port}, data directory ${cluster.dataDir} (OS user ${cluster.osUser})\n`,
    );
    setup = createBartSetup();
    const server = 'demo';
    const baseConfig = readFileSync(setup.configPath, 'utf8');
    setup.writeConfig(`${baseConfig}\n${serverSection(cluster, server, { description: '"pgbart demo server"' })}`);
    const configPath = setup.configPath;
    // Started as root (when we are): bart becomes the bart_host user by itself, as in production.
    // Output is passed through as it comes, so waits (CHECK-CONFIG's archiving test) show live.
    const runTool = async (tool: 'bart' | 'bart-scanner', args: string[], expectExit: number): Promise<string> => {
      process.stdout.write(`$ ${tool} ${args.join(' ')}\n`);
      const r = await new Promise<{ code: number | null; stdout: string }>((resolvePromise, reject) => {
        const child = spawn(process.execPath, [join(REPO_ROOT, 'bin', `${tool}.js`), ...args], {
          env: { ...process.env, BART_CONFIG: configPath },
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let stdout = '';
        child.stdout.on('data', (d: Buffer) => {
          stdout += d.toString();
          process.stdout.write(d);
        });
        child.stderr.on('data', (d: Buffer) => process.stdout.write(d));
        child.on('error', reject);
        child.on('close', (code) => resolvePromise({ code, stdout }));
      });
      if (r.code !== expectExit)
        throw new Error(`${tool} ${args.join(' ')} exited with ${r.code} (expected ${expectExit})`);
      return r.stdout;
    };
    const ctx: DemoContext = {
      cluster,
      baseConfig,
      setup,
      server,
      state,
      say: (text) => process.stdout.write(`${text}\n`),
      bart: (args, expectExit = 0) => runTool('bart', args, expectExit),
      scanner: (args, expectExit = 0) => runTool('bart-scanner', args, expectExit),
    };
    for (const [i, step] of steps.entries()) {
      banner(`${i + 1}. ${step.title}`);
      await step.run(ctx);
    }
    banner('Done: the demo cluster and catalog are removed now');
    return 0;
  } catch (err) {
    process.stderr.write(`\nDEMO FAILED: ${(err as Error).message}\n`);
    if (cluster) process.stderr.write(`--- PostgreSQL log (last lines) ---\n${cluster.logTail(30)}\n`);
    return 1;
  } finally {
    await cleanup();
  }
}

process.exitCode = await main();
