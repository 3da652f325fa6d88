import { link, readdir, readFile, rename, unlink, writeFile } from 'node:fs/promises';
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
 * stays `backup` because BACKUP used it first (older catalogs and cleanup code know it). RESTORE
 * does not take it (a long restore must not hold up the nightly BACKUP): it registers as a reader
 * instead, see {@link registerRestore}.
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

/** How a command takes the server lock. */
export interface ServerLockOptions {
  /**
   * The command deletes backups or archived WAL (DELETE, MANAGE -d): it refuses while a RESTORE of
   * the server runs, since that RESTORE may be reading exactly what would be deleted.
   */
  deletes?: boolean;
}

/** Takes the server catalog lock (see {@link SERVER_LOCK_NAME}) for `command`. */
export async function acquireServerLock(serverDir: string, command: string, opts: ServerLockOptions = {}): Promise<CatalogLock> {
  const lock = await acquireLock(serverDir, SERVER_LOCK_NAME, command);
  if (!opts.deletes) return lock;
  // Checked with the lock held: a RESTORE registering from now on sees us and refuses (registerRestore).
  let readers: RestoreReader[];
  try {
    readers = await liveRestores(serverDir);
  } catch (err) {
    await lock.release();
    throw err;
  }
  const r = readers[0];
  if (r) {
    await lock.release();
    const more = readers.length > 1 ? ` and ${readers.length - 1} other RESTORE(s)` : '';
    throw new BartError(
      `RESTORE of backup ${r.backups.join(', ')} is running for this server (pid ${r.pid}, started ${r.started}, into ${r.path})${more}; ` +
        `${command} would delete backups or WAL it reads: try again when it has finished (reader lock ${join(serverDir, readerFileName(r.pid))})`,
    );
  }
  return lock;
}

/** Commands holding the server lock that delete backups or WAL; a RESTORE does not start under them. */
const DELETING_COMMANDS = new Set(['DELETE', 'MANAGE -d']);

/** A RESTORE reading a server's catalog, as recorded in its reader lock file. */
export interface RestoreReader {
  pid: number;
  started: string;
  /** The backups it reads (the chain, full backup first). */
  backups: string[];
  /** Where it restores to (`user@host:PATH` for a remote restore). */
  path: string;
}

function readerFileName(pid: number): string {
  return `restore-${pid}.lock`;
}

/**
 * The RESTOREs of a server that are running (one reader lock file each); the files of dead
 * processes are removed on the way (taken over).
 */
export async function liveRestores(serverDir: string): Promise<RestoreReader[]> {
  let names: string[];
  try {
    names = await readdir(serverDir);
  } catch (err) {
    if (isErrnoError(err) && err.code === 'ENOENT') return [];
    throw err;
  }
  const live: RestoreReader[] = [];
  for (const name of names.sort()) {
    const m = /^restore-(\d+)\.lock$/.exec(name);
    if (!m) continue;
    const path = join(serverDir, name);
    let reader: RestoreReader | undefined;
    try {
      reader = JSON.parse(await readFile(path, 'utf8')) as RestoreReader;
    } catch {
      reader = undefined; // written by rename, so never half-written; unreadable means damaged: stale
    }
    if (reader && reader.pid === Number(m[1]) && processAlive(reader.pid)) live.push(reader);
    else await unlink(path).catch(() => undefined);
  }
  return live;
}

/**
 * Registers a RESTORE as a reader of the server's catalog (`restore-<pid>.lock`, naming its pid,
 * start time, backups and path), so that DELETE and MANAGE -d refuse while it runs. RESTORE takes
 * no exclusive lock: BACKUP, plain MANAGE and other RESTOREs run beside it. The reader file is
 * written first and the server lock checked after, while a deleting command takes the server lock
 * first and checks the readers after: whichever comes second sees the other, so they never both
 * proceed. A deleting command that finished just before is caught by the caller, which checks once
 * registered that its backups still exist.
 */
export async function registerRestore(serverDir: string, reader: Omit<RestoreReader, 'pid' | 'started'>): Promise<CatalogLock> {
  const me: RestoreReader = { pid: process.pid, started: new Date().toISOString(), ...reader };
  const path = join(serverDir, readerFileName(me.pid));
  const tmp = join(serverDir, `.${readerFileName(me.pid)}.tmp-${me.pid}-${Date.now().toString(36)}`);
  try {
    await writeFile(tmp, JSON.stringify(me), { mode: 0o600 });
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    if (isErrnoError(err) && err.code === 'ENOENT') throw new BartError(`catalog directory ${serverDir} does not exist (run bart INIT for this server first)`);
    throw err;
  }
  const release = async () => {
    await unlink(path).catch(() => undefined);
  };
  const holder = await serverLockHolder(serverDir);
  if (holder && DELETING_COMMANDS.has(holder.command)) {
    await release();
    throw new BartError(`${holder.command} is running for this server (pid ${holder.pid}, started ${holder.started}) and may delete what RESTORE would read; try again when it has finished`);
  }
  return { release };
}

/** The live holder of the server catalog lock, if any (for read-only commands that report it). */
export async function serverLockHolder(serverDir: string): Promise<LockHolder | undefined> {
  const holder = await readHolder(join(serverDir, `${SERVER_LOCK_NAME}.lock`));
  return holder && processAlive(holder.pid) ? holder : undefined;
}
