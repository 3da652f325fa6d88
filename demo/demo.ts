/**
 * `npm run demo`: a guided run of pgbart on a throwaway local PostgreSQL 15 cluster. It writes a
 * bart.cfg, then runs each `bart` command a DBA would, printing the command and what it shows.
 * Everything it creates (cluster, catalog, config) is removed at the end, also on failure or Ctrl-C.
 *
 * Later features add themselves by appending steps to {@link steps}.
 */
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createBartSetup, serverSection, type BartSetup } from '../test/harness/bart.js';
import { TestCluster } from '../test/harness/cluster.js';
import { REPO_ROOT } from '../test/harness/pg-binaries.js';

/** What every step can use. */
export interface DemoContext {
  cluster: TestCluster;
  setup: BartSetup;
  /** Section name of the demo server in bart.cfg. */
  server: string;
  /** Runs `bart ...args`, printing the command line and its output; fails the demo on an unexpected exit status. */
  bart(args: string[], expectExit?: number): Promise<string>;
  /** Prints a shell-like line for something the demo does outside bart. */
  say(text: string): void;
}

/** One step of the guided run. */
export interface DemoStep {
  title: string;
  run(ctx: DemoContext): Promise<void>;
}

const PG_VERSION = 15;

/** The guided run, in order. Append BACKUP / SHOW-BACKUPS / RESTORE / ... steps here. */
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
      await ctx.cluster.query('CREATE TABLE demo AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 100000) g');
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
      const archived = readdirSync(archiveDir).filter((f) => /^[0-9A-F]{24}$/.test(f)).sort();
      const last = archived[archived.length - 1]!;
      // The segment after the last archived one is the one PostgreSQL is still writing: not archived yet.
      const next = `${last.slice(0, 16)}${(parseInt(last.slice(16), 16) + 1).toString(16).toUpperCase().padStart(8, '0')}`;
      const target = join(ctx.setup.dir, 'RECOVERYXLOG');
      await ctx.bart(['ARCHIVE-GET', '-s', ctx.server, last, target]);
      ctx.say(`(${target} now holds the segment: ${statSync(target).size} bytes)`);
      await ctx.bart(['ARCHIVE-GET', '-s', ctx.server, next, target], 1);
    },
  },
];

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
  const cleanup = (): Promise<void> => {
    cleaning ??= (async () => {
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
    process.stdout.write(`PostgreSQL ${PG_VERSION} runs on ${cluster.host}:${cluster.port}, data directory ${cluster.dataDir} (OS user ${cluster.osUser})\n`);
    setup = createBartSetup();
    const server = 'demo';
    setup.writeConfig(`${readFileSync(setup.configPath, 'utf8')}\n${serverSection(cluster, server, { description: '"pgbart demo server"' })}`);
    const bartJs = join(REPO_ROOT, 'bin', 'bart.js');
    const configPath = setup.configPath;
    const ctx: DemoContext = {
      cluster,
      setup,
      server,
      say: (text) => process.stdout.write(`${text}\n`),
      async bart(args, expectExit = 0) {
        process.stdout.write(`$ bart ${args.join(' ')}\n`);
        // Started as root (when we are): bart becomes the bart_host user by itself, as in production.
        // Output is passed through as it comes, so waits (CHECK-CONFIG's archiving test) show live.
        const r = await new Promise<{ code: number | null; stdout: string }>((resolvePromise, reject) => {
          const child = spawn(process.execPath, [bartJs, ...args], { env: { ...process.env, BART_CONFIG: configPath }, stdio: ['ignore', 'pipe', 'pipe'] });
          let stdout = '';
          child.stdout.on('data', (d: Buffer) => {
            stdout += d.toString();
            process.stdout.write(d);
          });
          child.stderr.on('data', (d: Buffer) => process.stdout.write(d));
          child.on('error', reject);
          child.on('close', (code) => resolvePromise({ code, stdout }));
        });
        if (r.code !== expectExit) throw new Error(`bart ${args.join(' ')} exited with ${r.code} (expected ${expectExit})`);
        return r.stdout;
      },
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
