import { loadConfig } from '../config/parse-config.js';
import { locateConfig } from '../config/locate-config.js';
import type { BartConfig } from '../config/types.js';
import { BartError } from '../util/errors.js';
import { configureLog } from '../util/log.js';
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
  const bartUser = config.global.bartHost.user;
  if (isRoot() && bartUser !== 'root') {
    switchToUser(bartUser);
  } else if (currentUserName() !== bartUser) {
    throw new BartError(`bart must run as the BART user "${bartUser}" (bart_host in ${config.path}) or as root, not as "${currentUserName()}"`);
  }
  configureLog({ logfile: config.global[opts.logTo], debug: opts.debug, quiet: opts.quiet === true });
  return config;
}
