// CLI bootstrap: how bart and bart-scanner start, config found, BART user taken and log opened.

import { loadConfig } from '../config/parse-config.js';
import { locateConfig } from '../config/locate-config.js';
import type { BartConfig } from '../config/types.js';
import { BartError, errorMessage } from '../util/errors.js';
import { configureLog, log, redactSecrets } from '../util/log.js';
import { currentUserName, isRoot, switchToUser } from '../util/os-user.js';

/** How a program (bart or bart-scanner) starts. */
export interface BootstrapOptions {
  /** -c/--config-path, if given. */
  configPath?: string;
  debug: boolean;
  /** Suppress console INFO lines (machine-readable output on stdout). */
  quiet?: boolean;
  /** Which config key names the logfile (bart: logfile, bart-scanner: scanner_logfile). */
  logTo: 'logfile' | 'scannerLogfile';
}

/**
 * Finds and validates bart.cfg, becomes the BART user named in bart_host (when started as root;
 * any other user than that one is refused), and opens the log.
 */
export function bootstrap(opts: BootstrapOptions): BartConfig {
  const config = loadConfig(locateConfig(opts.configPath));
  // direct_io = off reaches util/direct-writer.ts (and the worker threads, which copy this environment) this way.
  if (!config.global.directIo) process.env.PGBART_DIRECT_IO = 'off';
  const bartUser = config.global.bartHost.user;
  if (isRoot() && bartUser !== 'root') {
    switchToUser(bartUser);
  } else if (currentUserName() !== bartUser) {
    throw new BartError(
      `bart must run as the BART user "${bartUser}" (bart_host in ${config.path}) or as root, not as "${currentUserName()}"`,
    );
  }
  configureLog({ logfile: config.global[opts.logTo], debug: opts.debug, quiet: opts.quiet === true });
  return config;
}

/**
 * Last line of defence of a CLI process (bart, bart-scanner): an error no command caught (a stream
 * 'error' nobody listens to, a rejected promise nobody awaits) would otherwise end the process with
 * Node's stack trace and exit code 1 or 7. It becomes one `ERROR:` line on stderr and exit code 2,
 * and the full stack goes to the logfile (when the config has been read) to find where it came from.
 * The process exits at once: after such an error its state is unknown, so nothing more may run.
 */
export function installCrashGuard(program: 'bart' | 'bart-scanner'): void {
  const onFatal = (kind: string) => (err: unknown) => {
    const message = errorMessage(err).replace(/\s*\n\s*/g, ' ');
    try {
      const stack = err instanceof Error && err.stack ? err.stack : String(err);
      log.fileOnly('ERROR', `${program}: ${kind}: ${stack}`);
      process.stderr.write(`ERROR:  ${redactSecrets(message)} (internal error: ${kind})\n`);
      if (process.env.BART_DEBUG_STACK) process.stderr.write(`${stack}\n`);
    } finally {
      process.exit(2);
    }
  };
  process.on('uncaughtException', onFatal('uncaught exception'));
  process.on('unhandledRejection', onFatal('unhandled promise rejection'));
}
