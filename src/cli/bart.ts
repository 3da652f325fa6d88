// CLI: the bart program, its subcommands and options parsed with commander and dispatched.

import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { readFileSync } from 'node:fs';
import { bootstrap, installCrashGuard } from './bootstrap.js';
import type { CommandContext } from '../commands/context.js';
import { BartError, errorMessage } from '../util/errors.js';
import { log } from '../util/log.js';

const VERSION = (
  JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

/** Subcommands, in the order `bart --help` lists them. Matching is case-insensitive. */
const SUBCOMMANDS = [
  'CHECK-CONFIG',
  'INIT',
  'BACKUP',
  'SHOW-SERVERS',
  'SHOW-BACKUPS',
  'VERIFY-CHKSUM',
  'VERIFY-RESTORE',
  'MANAGE',
  'RESTORE',
  'DELETE',
  'ARCHIVE-PUSH',
  'ARCHIVE-GET',
  'ARCHIVER',
];

/** Parses BART-style boolean words (true/false, on/off, yes/no, 1/0) of an option. */
function booleanWord(option: string) {
  return (value: string): boolean => {
    const v = value.toLowerCase();
    if (['true', 'on', 'yes', '1'].includes(v)) return true;
    if (['false', 'off', 'no', '0'].includes(v)) return false;
    throw new InvalidArgumentError(`${option} takes true or false, not "${value}"`);
  };
}

/**
 * Folds `--target-inclusive [bool]` (BART's spelling, PostgreSQL's recovery_target_inclusive) into
 * the `targetExclusive` flag RESTORE reads; contradicting `--target-exclusive` is an error.
 */
function withInclusive(o: Record<string, unknown>): Record<string, unknown> {
  if (o.targetInclusive === undefined) return o;
  const inclusive = o.targetInclusive !== false;
  if (inclusive && o.targetExclusive === true)
    throw new BartError('--target-inclusive and --target-exclusive contradict each other: give one of them');
  const { targetInclusive: _ignored, ...rest } = o;
  return { ...rest, targetExclusive: !inclusive };
}

function integer(min: number, max: number, what: string) {
  return (value: string): number => {
    if (!/^\d+$/.test(value))
      throw new InvalidArgumentError(`${what} must be an integer from ${min} to ${max}, not "${value}"`);
    const n = Number(value);
    if (n < min || n > max) throw new InvalidArgumentError(`${what} must be from ${min} to ${max}, not ${n}`);
    return n;
  };
}

/** Loads the config, becomes the BART user, opens the logfile; then runs the command. */
async function withContext(
  program: Command,
  action: (ctx: CommandContext) => Promise<number | void>,
  opts: { quiet?: boolean; prewarmKeysOf?: string } = {},
): Promise<void> {
  const globals = program.opts<{ configPath?: string; debug?: boolean }>();
  const debug = globals.debug === true;
  const config = bootstrap({
    ...(globals.configPath ? { configPath: globals.configPath } : {}),
    debug,
    quiet: opts.quiet === true,
    logTo: 'logfile',
  });
  log.fileOnly('INFO', `bart ${process.argv.slice(2).join(' ')}`);
  // An encrypted repository's key derivation (scrypt) runs on the thread pool while the command's modules load. Its
  // small module is loaded first, on its own: loaded beside the command's (hundreds of ms of modules), it came in
  // late and the derivation started ~0.35 s after the process; a command then waited for the key.
  if ('prewarmKeysOf' in opts && config.servers.some((s) => s.repositoryCipher !== 'none')) {
    const prewarm = await import('../commands/prewarm-keys.js').catch(() => undefined);
    void prewarm?.prewarmKeys(config, opts.prewarmKeysOf).catch(() => {});
  }
  const code = await action({ config, debug });
  if (typeof code === 'number' && code !== 0) process.exitCode = code;
}

function buildProgram(): Command {
  const program = new Command('bart');
  program
    .description('pgbart: Backup And Recovery Tool for PostgreSQL (BART-compatible)')
    .version(VERSION, '-v, --version', 'print the version and exit')
    .helpOption('-h, --help', 'show help')
    .option(
      '-c, --config-path <file>',
      'bart.cfg to use (default: $BART_CONFIG, /etc/bart.cfg, $BART_HOME/etc/bart.cfg)',
    )
    .option('-d, --debug', 'print debug output')
    .enablePositionalOptions()
    .showHelpAfterError(false)
    .exitOverride()
    .configureOutput({ outputError: (text, write) => write(text.replace(/^error: /i, 'ERROR: ')) });

  program
    .command('CHECK-CONFIG')
    .description('check the [BART] section, or one server with -s')
    .option('-s, --server <name>', 'server to check')
    .action(async (o: { server?: string }) => {
      await withContext(program, async (ctx) => (await import('../commands/check-config.js')).checkConfig(ctx, o));
    });

  program
    .command('INIT')
    .description('create catalog directories and configure WAL archiving')
    .option('-s, --server <name>', 'server name or all')
    .option('-o, --override', 'replace an existing archive_command')
    .option('-r, --rebuild', 'rebuild backupinfo files from the backups')
    .option('-i, --backupid <id>', 'with -r: backup id, name or all')
    .option('--no-configure', 'do not change archive_command / archive_mode')
    .action(
      async (o: { server?: string; override?: boolean; rebuild?: boolean; backupid?: string; configure: boolean }) => {
        await withContext(program, async (ctx) => (await import('../commands/init.js')).init(ctx, o));
      },
    );

  program
    .command('BACKUP')
    .description('take a full backup, or an incremental one with --parent')
    .option('-s, --server <name>', 'server name or all')
    .addOption(new Option('-F, --format <format>', 'p (plain) or t (tar)').choices(['p', 't']).default('t'))
    .option('-z, --gzip', 'compress with gzip')
    .option('-c, --compress-level <level>', 'gzip/zstd compression level 1-9', integer(1, 9, 'compression level'))
    .addOption(new Option('--compress <method>', 'compression method').choices(['gzip', 'lz4', 'zstd', 'none']))
    .option('--backup-name <name>', 'backup name (template variables allowed)')
    .option('--thread-count <n>', 'parallel workers', integer(1, 128, 'thread count'))
    .addOption(
      new Option('--checksum-algorithm <alg>', 'per-file checksums (default CRC32C)').choices([
        'CRC32C',
        'MD5',
        'SHA256',
        'NONE',
        'crc32c',
        'md5',
        'sha256',
        'none',
      ]),
    )
    .option('--with-pg_basebackup', 'use pg_basebackup_path instead of the native engine')
    .option('--no-pg_basebackup', 'use the native engine (default)')
    .option('--parent <id>', 'take an incremental backup on top of this backup id or name')
    .option('--check', 'with --parent: only check that everything an incremental needs is there')
    .option('--no-verify-checksums', 'do not verify the data checksums of the pages read')
    .action(async (o: Record<string, unknown>) => {
      await withContext(program, async (ctx) => (await import('../commands/backup.js')).backup(ctx, o), {
        prewarmKeysOf: o.server as string | undefined,
      });
    });

  program
    .command('SHOW-SERVERS')
    .description('show server settings and catalog usage')
    .option('-s, --server <name>', 'server name or all')
    .addOption(new Option('--output <format>', 'output format').choices(['text', 'json']).default('text'))
    .action(async (o: { server?: string; output: string }) => {
      await withContext(program, async (ctx) => (await import('../commands/show-servers.js')).showServers(ctx, o), {
        quiet: o.output === 'json',
      });
    });

  program
    .command('SHOW-BACKUPS')
    .description('list backups')
    .option('-s, --server <name>', 'server name or all')
    .option('-i, --backupid <id>', 'backup id, name or all')
    .option('-t, --toggle', "one detailed block per backup (BART's list format)")
    // Earlier pgbart releases spelled the long form --show-all; still accepted.
    .addOption(new Option('--show-all').hideHelp())
    .addOption(new Option('--output <format>', 'output format').choices(['text', 'json']).default('text'))
    .action(async (o: { server?: string; backupid?: string; toggle?: boolean; showAll?: boolean; output: string }) => {
      const opts = { ...o, showAll: o.toggle === true || o.showAll === true };
      await withContext(program, async (ctx) => (await import('../commands/show-backups.js')).showBackups(ctx, opts), {
        quiet: o.output === 'json',
      });
    });

  program
    .command('VERIFY-CHKSUM')
    .description('recompute and compare the checksum of every backup file')
    .option('-s, --server <name>', 'server name or all')
    .option('-i, --backupid <id>', 'backup id, name or all')
    .action(async (o: { server?: string; backupid?: string }) => {
      await withContext(program, async (ctx) => (await import('../commands/verify-chksum.js')).verifyChksum(ctx, o));
    });

  program
    .command('VERIFY-RESTORE')
    .description('restore backups into a scratch directory, start them and check them (amcheck, page checksums)')
    .option('-s, --server <name>', 'server name')
    .option('-i, --backupid <id>', 'backup id, name or all (default: the latest)')
    .option('-w, --workers <n>', 'parallel workers for the restore and pg_amcheck', integer(1, 128, 'workers'))
    .addOption(new Option('--output <format>', 'output format').choices(['text', 'json']).default('text'))
    .action(async (o: { server?: string; backupid?: string; workers?: number; output: string }) => {
      await withContext(program, async (ctx) => (await import('../commands/verify-restore.js')).verifyRestore(ctx, o), {
        quiet: o.output === 'json',
      });
    });

  program
    .command('MANAGE')
    .description('apply retention policies, list or delete obsolete backups, keep/nokeep')
    .option('-s, --server <name>', 'server name or all')
    .option('-l, --list-obsolete', 'list obsolete backups')
    .option('-d, --delete-obsolete', 'delete obsolete backups')
    .addOption(new Option('-c, --change-status <status>', 'keep or nokeep').choices(['keep', 'nokeep']))
    .option('-i, --backupid <id>', 'backup id, name or all (with -c)')
    .option('-n, --dry-run', 'say what would be done, change nothing')
    .addOption(new Option('--output <format>', 'output format for -l').choices(['text', 'json']).default('text'))
    .action(async (o: Record<string, unknown>) => {
      await withContext(program, async (ctx) => (await import('../commands/manage.js')).manage(ctx, o), {
        quiet: o.output === 'json',
      });
    });

  program
    .command('RESTORE')
    .description('restore a backup, with optional point-in-time recovery')
    .option('-s, --server <name>', 'server name')
    .option('-p, --restore-path <path>', 'target data directory (empty or absent; with --delta, an existing one)')
    .option('-i, --backupid <id>', 'backup id or name (default: latest)')
    .option('-r, --remote-host <user@host>', 'restore to another host over ssh')
    .option('-w, --workers <n>', 'parallel workers', integer(1, 128, 'workers'))
    .option('-t, --target-tli <tli>', 'recovery_target_timeline (number, latest or current)')
    .option('-x, --target-xid <xid>', 'recovery_target_xid')
    .option('-g, --target-timestamp <timestamp>', 'recovery_target_time')
    .option('--target-lsn <lsn>', 'recovery_target_lsn')
    .option('--target-name <name>', 'recovery_target_name (a restore point)')
    .option('--target-immediate', 'stop as soon as the backup is consistent')
    .option('--target-exclusive', 'stop just before the target instead of just after it')
    .addOption(
      new Option(
        '--target-inclusive [bool]',
        'stop just after the target (the default); "--target-inclusive false" is --target-exclusive',
      ).argParser(booleanWord('--target-inclusive')),
    )
    .addOption(
      new Option('--target-action <action>', 'what to do at the target').choices(['pause', 'promote', 'shutdown']),
    )
    .option('-c, --copy-wals', 'copy the needed WAL into the restored cluster')
    .option('--disable-checksum', 'skip checksum verification')
    .option('--tablespace-map <map>', 'OID=PATH;OID=PATH restore locations of tablespaces')
    .option('--standby', 'write standby.signal instead of recovery.signal')
    .option('--delta', 'rewrite only what differs in an existing data directory of the same cluster (server stopped)')
    .action(async (o: Record<string, unknown>) => {
      await withContext(
        program,
        async (ctx) => (await import('../commands/restore.js')).restore(ctx, withInclusive(o)),
        { prewarmKeysOf: o.server as string | undefined },
      );
    });

  program
    .command('DELETE')
    .description('delete backups (and their incremental descendants)')
    .option('-s, --server <name>', 'server name')
    .option('-i, --backupid <ids>', 'backup ids or names, comma-separated, or all')
    .option('-n, --dry-run', 'say what would be deleted, delete nothing')
    .action(async (o: Record<string, unknown>) => {
      await withContext(program, async (ctx) => (await import('../commands/delete.js')).deleteBackups(ctx, o));
    });

  program
    .command('ARCHIVE-PUSH')
    .description('store one WAL file in the archive (for archive_command)')
    .option('-s, --server <name>', 'server name')
    .option('--stdin', 'read the WAL file from standard input; the argument is then its name (%f)')
    .argument('<path>', 'WAL file to archive (%p), or its name (%f) with --stdin')
    .action(async (path: string, o: { server?: string; stdin?: boolean }) => {
      await withContext(program, async (ctx) =>
        (await import('../commands/archive-push.js')).archivePush(ctx, o, path),
      );
    });

  program
    .command('ARCHIVE-GET')
    .description('fetch one WAL file from the archive (for restore_command)')
    .option('-s, --server <name>', 'server name')
    .addOption(new Option('--prefetch-segment-size <bytes>').hideHelp())
    .argument('<walfile>', 'WAL file name (%f)')
    .argument('<destination>', 'where to write it (%p), or - for standard output')
    .action(async (walfile: string, destination: string, o: { server?: string; prefetchSegmentSize?: string }) => {
      await withContext(program, async (ctx) =>
        (await import('../commands/archive-get.js')).archiveGet(ctx, o, walfile, destination),
      );
    });

  program
    .command('ARCHIVER')
    .description('push the queued WAL of a server with archive_async = on (started by ARCHIVE-PUSH; exits when idle)')
    .option('-s, --server <name>', 'server name')
    .option('--wal-dir <dir>', "the server's pg_wal on this host: push files marked .ready before PostgreSQL asks")
    .option('--idle-ms <ms>', 'exit after this long with nothing to do (default 10000)')
    .action(async (o: { server?: string; walDir?: string; idleMs?: string }) => {
      await withContext(program, async (ctx) => (await import('../commands/archive-async.js')).archiverCommand(ctx, o));
    });

  return program;
}

/** Upper-cases the subcommand so `bart show-backups` works like `bart SHOW-BACKUPS`. */
function normalizeArgv(argv: string[]): string[] {
  const out = [...argv];
  for (let i = 0; i < out.length; i++) {
    const a = out[i]!;
    if (a === '-c' || a === '--config-path') {
      i++;
      continue;
    }
    if (a.startsWith('-')) continue;
    const upper = a.toUpperCase();
    if (SUBCOMMANDS.includes(upper)) out[i] = upper;
    break;
  }
  return out;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(normalizeArgv(argv), { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exitCode = err.exitCode;
      return;
    }
    if (err instanceof BartError) {
      log.error(err.message);
      process.exitCode = err.exitCode;
      return;
    }
    log.error(`unexpected failure: ${errorMessage(err)}`);
    log.fileOnly('ERROR', `bart: unexpected failure: ${err instanceof Error && err.stack ? err.stack : String(err)}`);
    if (process.env.BART_DEBUG_STACK || program.opts<{ debug?: boolean }>().debug)
      process.stderr.write(`${(err as Error).stack}\n`);
    process.exitCode = 2;
  }
}

installCrashGuard('bart');
await main(process.argv.slice(2));
