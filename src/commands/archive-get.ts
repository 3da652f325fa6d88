// Command: ARCHIVE-GET, one WAL file fetched from the archive for restore_command.

import { stat } from 'node:fs/promises';
import {
  notePrefetchRequest,
  prefetchPays,
  runPrefetch,
  servePrefetched,
  startPrefetch,
} from '../archive/async-get.js';
import { getWalFile, STDOUT_DESTINATION } from '../archive/wal-archive.js';
import { BartError } from '../util/errors.js';
import { openWalArchive } from '../storage/open-repository.js';
import { configureLog, log } from '../util/log.js';
import { selectOneServer, type CommandContext } from './context.js';

/** Options of `bart ARCHIVE-GET`. */
export interface ArchiveGetOptions {
  server?: string;
  /**
   * Internal (archive_async): instead of fetching <walfile>, run the prefetcher for the segments
   * after it (of this segment size), then exit.
   */
  prefetchSegmentSize?: string;
}

/**
 * `bart ARCHIVE-GET -s NAME <walfile> <destination>`, meant for restore_command
 * (`... ARCHIVE-GET -s NAME %f %p`), reading the server's WAL archive (openWalArchive: archive_path,
 * or the bucket). A file that is not in the archive exits 1 with one line: PostgreSQL asks for
 * files that do not exist (the next timeline's history, the segment after the last one) and
 * treats a non-zero exit as "not there", so this is normal and must stay quiet. Destination `-`
 * writes the file to standard output (a restore_command on another host, over ssh).
 */
export async function archiveGet(
  ctx: CommandContext,
  options: ArchiveGetOptions,
  walfile: string,
  destination: string,
): Promise<number> {
  const server = selectOneServer(ctx.config, options.server, 'ARCHIVE-GET');
  // Destination `-`: stdout carries the file, so no INFO line may go there.
  if (destination === STDOUT_DESTINATION) configureLog({ quiet: true });
  if (options.prefetchSegmentSize !== undefined) {
    if (!server.archiveAsync) throw new BartError(`prefetching needs archive_async = on for server "${server.name}"`);
    await runPrefetch(ctx.config, server, walfile, Number(options.prefetchSegmentSize));
    return 0;
  }
  const archive = openWalArchive(ctx.config, server);
  try {
    // archive_async = on: a segment prefetched (and still what the archive holds) is served from the spool.
    const prefetch = server.archiveAsync && destination !== STDOUT_DESTINATION;
    if (prefetch && (await servePrefetched(ctx.config, server, archive, walfile, destination))) {
      log.fileOnly(
        'INFO',
        `restored WAL file "${walfile}" (prefetched) to "${destination}" for server "${server.name}"`,
      );
      await startPrefetch(ctx.config, server, walfile, (await stat(destination)).size);
      return 0;
    }
    const outcome = await getWalFile(archive, walfile, destination);
    if (prefetch && prefetchPays(archive, outcome)) {
      await notePrefetchRequest(ctx.config, server, walfile);
      await startPrefetch(ctx.config, server, walfile, (await stat(destination)).size);
    }
    if (outcome === 'missing') {
      // Not an ERROR line: recovery probes for files that do not exist on every run.
      log.info(`WAL file "${walfile}" is not in the archive of server "${server.name}" (${archive.location})`);
      return 1;
    }
    log.fileOnly(
      'INFO',
      `restored WAL file "${walfile}"${outcome === 'restored-from-gz' ? ' (from .gz)' : ''} to "${destination}" for server "${server.name}"`,
    );
    log.debug(`restored "${walfile}" to "${destination}"`);
    return 0;
  } finally {
    await archive.close();
  }
}
