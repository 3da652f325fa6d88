// Command: ARCHIVE-PUSH, one WAL file stored in the archive for archive_command.

import { pushWalFile } from '../archive/wal-archive.js';
import { log } from '../util/log.js';
import { selectOneServer, type CommandContext } from './context.js';

/** Options of `bart ARCHIVE-PUSH`. */
export interface ArchivePushOptions {
  server?: string;
}

/**
 * `bart ARCHIVE-PUSH -s NAME <path>`, meant for archive_command (`... ARCHIVE-PUSH -s NAME %p`):
 * stores one WAL file in the server's archive path, atomically and idempotently. Exit 0 tells
 * PostgreSQL it may recycle the segment, so we only return 0 once the file is durable.
 */
export async function archivePush(ctx: CommandContext, options: ArchivePushOptions, path: string): Promise<number> {
  const server = selectOneServer(ctx.config, options.server, 'ARCHIVE-PUSH');
  const outcome = await pushWalFile(server.archivePath, path);
  if (outcome === 'already-archived') {
    log.info(
      `WAL file "${path}" is already archived for server "${server.name}" with identical content; nothing to do`,
    );
  } else {
    log.debug(`archived "${path}" to "${server.archivePath}" for server "${server.name}"`);
    log.fileOnly('INFO', `archived WAL file "${path}" for server "${server.name}"`);
  }
  return 0;
}
