// Command: ARCHIVE-PUSH, one WAL file stored in the archive for archive_command (a local path, or stdin over ssh).

import { basename, join } from 'node:path';
import { mapsAtPush, mbmSpoolDir } from '../archive/push-mbm-policy.js';
import { pushWalFile, pushWalStream } from '../archive/wal-archive.js';
import { openWalArchive } from '../storage/open-repository.js';
import { log } from '../util/log.js';
import { selectOneServer, type CommandContext } from './context.js';

/** Options of `bart ARCHIVE-PUSH`. */
export interface ArchivePushOptions {
  server?: string;
  /** The WAL file comes on standard input; the argument is its name (%f), not a path. */
  stdin?: boolean;
}

/**
 * `bart ARCHIVE-PUSH -s NAME <path>`, meant for archive_command (`... ARCHIVE-PUSH -s NAME %p`):
 * stores one WAL file in the server's WAL archive (openWalArchive: archive_path, or the bucket),
 * atomically and idempotently. `bart ARCHIVE-PUSH -s NAME --stdin <walname>` reads the file from
 * standard input instead, for a remote database host whose archive_command is
 * `ssh bart@barthost bart ARCHIVE-PUSH -s NAME --stdin %f < %p` (it needs nothing but a shell and
 * OpenSSH). Exit 0 tells PostgreSQL it may recycle the segment, so we only return 0 once the
 * file is durable. For an object-store archive of a server with incremental backups, the segment
 * is then mapped into its MBM here, from a local copy (push-mbm.ts).
 */
export async function archivePush(ctx: CommandContext, options: ArchivePushOptions, arg: string): Promise<number> {
  const server = selectOneServer(ctx.config, options.server, 'ARCHIVE-PUSH');
  if (server.archiveAsync) {
    // archive_async = on: queued durably on this host, pushed by the archiver (archive/async-push.ts). Imported
    // here and not above: PostgreSQL starts one ARCHIVE-PUSH per segment, and each module loaded costs every push.
    const { pushAsync } = await import('../archive/async-push.js');
    const outcome = await pushAsync(ctx.config, server, arg, options.stdin === true);
    log.fileOnly('INFO', `WAL file "${arg}" ${outcome} for asynchronous archiving of server "${server.name}"`);
    return 0;
  }
  const archive = openWalArchive(ctx.config, server);
  try {
    const name = options.stdin ? arg : basename(arg);
    const mbm = mapsAtPush(server, archive, name) ? await import('../archive/push-mbm.js') : undefined;
    const spool = mbm ? await mbm.prepareSpool(mbmSpoolDir(ctx.config, server)) : undefined;
    const copy = spool !== undefined ? { copyTo: join(spool, name) } : {};
    const outcome = options.stdin
      ? await pushWalStream(archive, arg, process.stdin, copy)
      : await pushWalFile(archive, arg, copy);
    const what = options.stdin ? `"${arg}" (from stdin)` : `"${arg}"`;
    if (outcome === 'already-archived') {
      log.info(
        `WAL file ${what} is already archived for server "${server.name}" with identical content; nothing to do`,
      );
    } else {
      log.debug(`archived ${what} to "${archive.location}" for server "${server.name}"`);
      log.fileOnly('INFO', `archived WAL file ${what} for server "${server.name}"`);
    }
    if (mbm && spool !== undefined) await mbm.mapSpooledSegments(archive, spool);
    return 0;
  } finally {
    await archive.close();
  }
}
