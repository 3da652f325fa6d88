// Command: ARCHIVER, the asynchronous WAL archiver of one server (started by ARCHIVE-PUSH, exits when idle).

import { runArchiver } from '../archive/async-archiver.js';
import { ARCHIVER_IDLE_MS } from '../archive/async-push.js';
import { BartError } from '../util/errors.js';
import { selectOneServer, type CommandContext } from './context.js';

/** Options of `bart ARCHIVER`. */
export interface ArchiverCommandOptions {
  server?: string;
  /** The server's pg_wal directory on this host, for look-ahead at archive_status/*.ready. */
  walDir?: string;
  /** Milliseconds with nothing to do before the archiver exits. */
  idleMs?: string;
}

/**
 * `bart ARCHIVER -s NAME [--wal-dir DIR]`: pushes the server's queued WAL (and, with --wal-dir, the
 * files PostgreSQL marked .ready) into its repository, then exits once idle. ARCHIVE-PUSH starts it
 * when archive_async is on; running it by hand drains the spool (e.g. after the repository is back).
 */
export async function archiverCommand(ctx: CommandContext, options: ArchiverCommandOptions): Promise<number> {
  const server = selectOneServer(ctx.config, options.server, 'ARCHIVER');
  let idleMs = ARCHIVER_IDLE_MS;
  if (options.idleMs !== undefined) {
    if (!/^\d{1,9}$/.test(options.idleMs))
      throw new BartError(`--idle-ms takes a number of milliseconds, not "${options.idleMs}"`);
    idleMs = Number(options.idleMs);
  }
  await runArchiver(ctx.config, server, {
    idleMs,
    ...(options.walDir !== undefined ? { walDir: options.walDir } : {}),
  });
  return 0;
}
