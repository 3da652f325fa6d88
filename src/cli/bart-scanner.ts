// CLI: the bart-scanner program, run the scanner daemon, signal it, scan one WAL file or print an MBM.

/**
 * bart-scanner: writes a modified block map (MBM) for every archived WAL segment of the servers
 * with allow_incremental_backups = enabled.
 *
 *   bart-scanner [-d] [-c CONFIG]                 run in the foreground
 *   bart-scanner [-d] [-c CONFIG] --daemon        run detached (pid file in bart_socket_directory)
 *   bart-scanner [-c CONFIG] RELOAD | STOP        signal the running scanner
 *   bart-scanner [-c CONFIG] <wal_file>           scan one WAL file by hand
 *   bart-scanner -p <mbm_file> [--output json]    print an MBM file
 */
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { loadConfig } from '../config/parse-config.js';
import type { BartConfig } from '../config/types.js';
import { BartError, errorMessage } from '../util/errors.js';
import { log } from '../util/log.js';
import { bootstrap, installCrashGuard } from './bootstrap.js';
import { readMbmFile } from '../scanner/mbm-format.js';
import { mbmToJson, mbmToText } from '../scanner/mbm-print.js';
import { scanWalFile } from '../scanner/scan-wal-file.js';
import { ScannerDaemon } from '../scanner/daemon.js';
import { isScannerRunning } from '../scanner/client.js';
import { prepareSocketDirectory, scannerPidPath, scannerSocketDirectory, scannerSocketPath } from '../scanner/paths.js';
import { canInspectProcesses, inspectProcess, readPidFile } from '../scanner/pid-file.js';

const USAGE = `Usage: bart-scanner [-d] [-c CONFIG] { --daemon | -p <mbm_file> [--output json] | <wal_file> | RELOAD | STOP }

  (no argument)     run the scanner in the foreground
  --daemon          run the scanner detached (pid file in bart_socket_directory)
  -p <mbm_file>     print a modified block map file (--output json for JSON)
  <wal_file>        scan one WAL file by hand (writes its MBM next to it)
  RELOAD            make the running scanner re-read bart.cfg
  STOP              stop the running scanner
  -c, --config-path FILE   bart.cfg to use
  -d, --debug       debug output
`;

interface Args {
  debug: boolean;
  configPath?: string;
  daemon: boolean;
  foregroundChild: boolean;
  print?: string;
  output: 'text' | 'json';
  action?: 'RELOAD' | 'STOP';
  walFile?: string;
  help: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { debug: false, daemon: false, foregroundChild: false, output: 'text', help: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const value = (name: string) => {
      const v = argv[++i];
      if (v === undefined) throw new BartError(`option ${name} needs a value`);
      return v;
    };
    if (arg === '-d' || arg === '--debug') a.debug = true;
    else if (arg === '-c' || arg === '--config-path') a.configPath = value(arg);
    else if (arg.startsWith('--config-path=')) a.configPath = arg.slice(14);
    else if (arg === '--daemon') a.daemon = true;
    else if (arg === '--foreground-child') a.foregroundChild = true;
    else if (arg === '-p' || arg === '--print') a.print = value(arg);
    else if (arg === '-o' || arg === '--output' || arg.startsWith('--output=')) {
      const v = arg.startsWith('--output=') ? arg.slice(9) : value(arg);
      if (v !== 'json' && v !== 'text') throw new BartError(`--output must be text or json, not "${v}"`);
      a.output = v;
    } else if (arg === '-h' || arg === '--help') a.help = true;
    else if (/^(reload|stop)$/i.test(arg)) a.action = arg.toUpperCase() as 'RELOAD' | 'STOP';
    else if (arg.startsWith('-')) throw new BartError(`unknown option "${arg}"\n${USAGE.trimEnd()}`);
    else if (a.walFile === undefined) a.walFile = arg;
    else throw new BartError(`unexpected argument "${arg}" (one WAL file at a time)`);
  }
  const modes = [a.daemon, a.print !== undefined, a.action !== undefined, a.walFile !== undefined].filter(
    Boolean,
  ).length;
  if (modes > 1) throw new BartError('give only one of --daemon, -p <mbm_file>, <wal_file>, RELOAD, STOP');
  return a;
}

function boot(a: Args): BartConfig {
  return bootstrap({ ...(a.configPath ? { configPath: a.configPath } : {}), debug: a.debug, logTo: 'scannerLogfile' });
}

/**
 * The pid of this configuration's running bart-scanner, established before anything is signalled:
 * the pid file must pass readPidFile's checks (regular file of the BART user, not writable by
 * others); the process must be a bart-scanner of the BART user (/proc); and when the daemon
 * answers on its socket, the pid it gives must be the same. A pid file naming any other process
 * (a reused pid, or one written there on purpose) is refused.
 */
async function scannerPidToSignal(config: BartConfig): Promise<number> {
  const path = scannerPidPath(config);
  if (!prepareSocketDirectory(config, false)) {
    throw new BartError(`bart-scanner is not running (no directory ${scannerSocketDirectory(config)})`);
  }
  const pid = readPidFile(path);
  if (pid === undefined) throw new BartError(`bart-scanner is not running (no pid file ${path})`);
  const ping = await isScannerRunning(config);
  if (ping.running && ping.pid !== pid) {
    throw new BartError(
      `the pid file ${path} names pid ${pid}, but the bart-scanner answering on ${scannerSocketPath(config)} ` +
        `is pid ${ping.pid}: refusing to signal pid ${pid}`,
    );
  }
  const proc = inspectProcess(pid);
  if (!proc.alive) throw new BartError(`bart-scanner is not running (pid ${pid} of ${path} is gone)`);
  if (!proc.isOurScanner) {
    // Without /proc, the daemon's own answer on its private socket is the only proof.
    if (!(ping.running && !canInspectProcesses())) {
      throw new BartError(
        `the pid file ${path} names pid ${pid}, which is not this configuration's bart-scanner (${proc.reason}): ` +
          'refusing to signal it',
      );
    }
  }
  return pid;
}

async function signalScanner(a: Args): Promise<number> {
  const config = boot(a);
  const pid = await scannerPidToSignal(config);
  if (a.action === 'RELOAD') {
    process.kill(pid, 'SIGHUP');
    log.info(`asked bart-scanner (pid ${pid}) to reload ${config.path}`);
    return 0;
  }
  process.kill(pid, 'SIGTERM');
  const until = Date.now() + 60_000;
  for (;;) {
    try {
      process.kill(pid, 0);
    } catch {
      log.info(`bart-scanner (pid ${pid}) stopped`);
      return 0;
    }
    if (Date.now() > until) throw new BartError(`bart-scanner (pid ${pid}) did not stop within 60 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function runForeground(a: Args, config: BartConfig): Promise<number> {
  const running = await isScannerRunning(config);
  if (running.running) throw new BartError(`bart-scanner is already running (pid ${running.pid})`);
  const daemon = new ScannerDaemon(config, () => loadConfig(config.path));
  await daemon.start();
  await daemon.done;
  return 0;
}

async function startDaemon(a: Args, config: BartConfig): Promise<number> {
  const running = await isScannerRunning(config);
  if (running.running) throw new BartError(`bart-scanner is already running (pid ${running.pid})`);
  const args = [process.argv[1]!, '-c', config.path, '--foreground-child', ...(a.debug ? ['-d'] : [])];
  const child = spawn(process.execPath, args, { detached: true, stdio: 'ignore', env: process.env });
  child.unref();
  const until = Date.now() + 15_000;
  while (Date.now() < until) {
    const r = await isScannerRunning(config);
    if (r.running) {
      log.info(`bart-scanner started in the background (pid ${r.pid}); log: ${config.global.scannerLogfile}`);
      return 0;
    }
    if (child.exitCode !== null) break;
    await new Promise((res) => setTimeout(res, 100));
  }
  throw new BartError(`bart-scanner did not start; see ${config.global.scannerLogfile}`);
}

async function main(argv: string[]): Promise<number> {
  const a = parseArgs(argv);
  if (a.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (a.print !== undefined) {
    const m = await readMbmFile(a.print);
    process.stdout.write(a.output === 'json' ? mbmToJson(m) + '\n' : mbmToText(m, a.print));
    return 0;
  }
  if (a.action) return signalScanner(a);
  if (a.walFile !== undefined) {
    const path = resolve(a.walFile);
    boot(a); // become the BART user (the MBM is written as that user) and open the log
    const r = await scanWalFile(path);
    if (r.status === 'waiting')
      throw new BartError(
        `${path}: its last record continues in segment ${r.nextSegment}, which is not next to it; no MBM written`,
      );
    log.info(
      `MBM file written: ${r.mbmPath} (${r.map.records} records, ${r.map.relations.length} relation forks, ${r.map.events.length} events)`,
    );
    return 0;
  }
  const config = boot(a);
  if (a.daemon) return startDaemon(a, config);
  return runForeground(a, config);
}

installCrashGuard('bart-scanner');
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const msg =
      err instanceof BartError || (err instanceof Error && err.name === 'WalDecodeError')
        ? err.message
        : `unexpected: ${errorMessage(err)}`;
    log.error(msg);
    process.exitCode = err instanceof BartError ? err.exitCode : 1;
  },
);
