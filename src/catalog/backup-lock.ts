import { link, readFile, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BartError, isErrnoError } from '../util/errors.js';
import { processAlive } from './catalog.js';

/** Who holds a lock. */
export interface LockHolder {
  pid: number;
  command: string;
  started: string;
}

/** A held lock; release it when done. */
export interface CatalogLock {
  release(): Promise<void>;
}

/**
 * Name of the one lock per server catalog (`backup_path/<server>/backup.lock`). Every command that
 * changes a server's catalog takes it: BACKUP, MANAGE (marking, WAL compression, -c, -d), DELETE and
 * INIT -r. They therefore never interleave: a second one refuses with the holder's command, pid and
 * start time. Read-only commands (SHOW-*, VERIFY-CHKSUM, MANAGE -l, dry runs) take no lock. The name
 * stays `backup` because BACKUP used it first (older catalogs and cleanup code know it).
 */
export const SERVER_LOCK_NAME = 'backup';

/**
 * Takes `<dir>/<name>.lock` exclusively (created by link(), so it never exists half-written). A lock
 * whose process is gone is taken over; a live one makes this fail with a message naming the holder.
 */
export async function acquireLock(dir: string, name: string, command: string): Promise<CatalogLock> {
  const path = join(dir, `${name}.lock`);
  for (let attempt = 0; attempt < 3; attempt++) {
    // Written to a temp file and hard-linked into place: the lock file appears with its content
    // (never empty), and link(), unlike rename(), fails when the lock exists.
    const holderNow: LockHolder = { pid: process.pid, command, started: new Date().toISOString() };
    const tmp = join(dir, `.${name}.lock.tmp-${process.pid}-${Date.now().toString(36)}`);
    try {
      await writeFile(tmp, JSON.stringify(holderNow), { mode: 0o600 });
    } catch (err) {
      if (isErrnoError(err) && err.code === 'ENOENT') throw new BartError(`catalog directory ${dir} does not exist (run bart INIT for this server first)`);
      throw err;
    }
    try {
      await link(tmp, path);
      return {
        release: async () => {
          await unlink(path).catch(() => undefined);
        },
      };
    } catch (err) {
      if (!isErrnoError(err) || err.code !== 'EEXIST') throw err;
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
    const holder = await readHolder(path);
    if (holder && processAlive(holder.pid) && holder.pid !== process.pid) {
      throw new BartError(`${holder.command} is running for this server (pid ${holder.pid}, started ${holder.started}); try again when it has finished (lock file ${path})`);
    }
    // Stale (its process is dead), unreadable, or our own: take it over. A process that read the same
    // stale lock may have taken it over already; unlink only what we read.
    const again = await readHolder(path);
    if (again === undefined || (holder !== undefined && again.pid === holder.pid && again.started === holder.started)) await unlink(path).catch(() => undefined);
  }
  throw new BartError(`could not take the lock ${path}`);
}

async function readHolder(path: string): Promise<LockHolder | undefined> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as LockHolder;
  } catch {
    return undefined;
  }
}

/** Takes the server catalog lock (see {@link SERVER_LOCK_NAME}) for `command`. */
export function acquireServerLock(serverDir: string, command: string): Promise<CatalogLock> {
  return acquireLock(serverDir, SERVER_LOCK_NAME, command);
}

/** The live holder of the server catalog lock, if any (for read-only commands that report it). */
export async function serverLockHolder(serverDir: string): Promise<LockHolder | undefined> {
  const holder = await readHolder(join(serverDir, `${SERVER_LOCK_NAME}.lock`));
  return holder && processAlive(holder.pid) ? holder : undefined;
}
