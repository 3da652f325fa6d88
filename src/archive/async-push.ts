// Concept: ARCHIVE-PUSH with archive_async on — acknowledge a segment once it is durably queued (or already pushed ahead), and keep an archiver running.

import { spawn } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import { liveLockHolder } from '../catalog/lock.js';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { bartScriptPath } from '../util/bart-binary.js';
import { crashPoint } from '../util/crash-point.js';
import { BartError, errorMessage } from '../util/errors.js';
import { log } from '../util/log.js';
import { readInOneBuffer } from '../util/read-in-one-buffer.js';
import { ARCHIVER_LOCK } from './async-archiver.js';
import {
  consumeDoneMarker,
  enqueue,
  prepareAsyncSpool,
  queuedFiles,
  readLastError,
  spoolPaths,
  type SpoolPaths,
} from './async-spool.js';
import { requireArchiveFileName } from './wal-archive.js';

/** Test hook: ARCHIVE-PUSH queues but starts no archiver (a crash test starts its own). */
export const NO_SPAWN_ENV = 'PGBART_ASYNC_NO_SPAWN';
/** How long a started archiver stays with nothing to do (it looks ahead in pg_wal meanwhile). */
export const ARCHIVER_IDLE_MS = 10_000;

/** What became of a file handed to {@link pushAsync}. */
export type AsyncPushOutcome = 'pushed-ahead' | 'queued' | 'already-queued';

/**
 * Hands one WAL file to asynchronous archiving. Exit 0 (a returned outcome) tells PostgreSQL it may
 * recycle the file, so it is returned only when (a) the archiver already pushed this very pg_wal
 * file durably (its done marker matches the file's identity), or (b) the file is durably queued in
 * the spool on this host. The queue is bounded (archive_async_queue_max): when it is full — the
 * repository fails, or the archiver cannot keep up — this fails with the archiver's last error, so
 * PostgreSQL keeps the WAL in pg_wal and says so in its log, instead of the spool growing forever.
 */
export async function pushAsync(
  config: BartConfig,
  server: ServerConfig,
  arg: string,
  stdin: boolean,
): Promise<AsyncPushOutcome> {
  const name = stdin ? arg : basename(arg);
  requireArchiveFileName(name, stdin ? 'WAL file name' : 'file');
  const paths = spoolPaths(config, server);
  const walDir = stdin ? undefined : dirname(resolve(arg));
  if (!stdin && (await consumeDoneMarker(paths, name, arg))) return 'pushed-ahead';
  await prepareAsyncSpool(paths);
  const queued = await queuedFiles(paths);
  if (queued.length >= server.archiveAsyncQueueMax && !queued.includes(name)) {
    await ensureArchiver(config, server, paths, walDir);
    const last = await readLastError(paths);
    throw new BartError(
      `the archive spool "${paths.queue}" of server "${server.name}" holds ${queued.length} files ` +
        `(archive_async_queue_max = ${server.archiveAsyncQueueMax}); PostgreSQL keeps "${name}" in pg_wal until the archiver catches up. ` +
        (last !== undefined ? `Archiver's last error: ${last}` : 'The archiver has recorded no error: it is behind.'),
    );
  }
  let open: () => AsyncIterable<Buffer>;
  let label: string;
  if (stdin) {
    open = () => process.stdin as AsyncIterable<Buffer>;
    label = `"${name}" (from stdin)`;
  } else {
    label = `"${arg}"`;
    try {
      const st = await stat(arg);
      if (!st.isFile()) throw new BartError(`"${arg}" is not a regular file`);
    } catch (err) {
      if (err instanceof BartError) throw err;
      throw new BartError(`cannot read WAL file "${arg}": ${errorMessage(err)}`);
    }
    open = () => readInOneBuffer(arg);
  }
  const outcome = await enqueue(paths, name, open, label);
  crashPoint('async:queued');
  await ensureArchiver(config, server, paths, walDir);
  return outcome;
}

/**
 * Starts the server's archiver unless one runs. The archiver looks at the queue once more after
 * releasing its lock, and this runs after the file is queued: so either the running archiver sees the
 * file, or this sees no archiver and starts one.
 */
async function ensureArchiver(
  config: BartConfig,
  server: ServerConfig,
  paths: SpoolPaths,
  walDir: string | undefined,
): Promise<void> {
  if (process.env[NO_SPAWN_ENV] === '1') return;
  try {
    if ((await liveLockHolder(paths.root, ARCHIVER_LOCK)) !== undefined) return;
    const args = [bartScriptPath(), '-c', config.path, 'ARCHIVER', '-s', server.name];
    if (walDir !== undefined) args.push('--wal-dir', walDir);
    const child = spawn(process.execPath, args, { detached: true, stdio: 'ignore' });
    await new Promise<void>((resolveSpawn) => {
      child.once('spawn', () => resolveSpawn());
      child.once('error', (err) => {
        // The file is queued: the next ARCHIVE-PUSH tries again; a full queue then fails loudly.
        log.warning(`cannot start the WAL archiver of "${server.name}": ${errorMessage(err)}`);
        resolveSpawn();
      });
    });
    child.unref();
  } catch (err) {
    log.warning(`cannot check the WAL archiver of "${server.name}": ${errorMessage(err)}`);
  }
}
