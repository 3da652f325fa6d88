// Catalog lock: the one lock every command takes on a server's catalog, and restore readers.

import { link, open, readdir, readFile, rename, stat, unlink, writeFile, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { BartError, isErrnoError } from '../util/errors.js';
import { processAlive } from './catalog.js';

/** Who holds a lock. */
export interface LockHolder {
  pid: number;
  command: string;
  started: string;
  /**
   * Identity of the holder process beside its pid (`<boot id>:<start time in clock ticks>`, from
   * /proc), so that a lock left by a dead process is not taken for live when its pid is reused.
   * Absent in locks written by older versions or where /proc is not available: the pid alone counts.
   */
  procStart?: string;
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
 *
 * Locks are always local files in `backup_path/<server>` on the BART host, also for a server whose
 * repository is in an S3 bucket (object storage has no atomic create-or-fail on every store, no
 * owner liveness and no way to break a dead holder's lock safely). So one BART host owns a
 * repository prefix: two BART hosts writing the same `s3_prefix` would not see each other's locks
 * (docs/object-storage.md).
 */
export const SERVER_LOCK_NAME = 'backup';

/*
 * The lock protocol, and why no two processes ever hold a lock at once.
 *
 * Taking: the holder record is written to a temp file and hard-linked to `<name>.lock`. link() fails
 * with EEXIST when the name exists, so of any number of processes exactly one creates the lock, and
 * the file never appears half-written. Nothing else ever creates the name (no rename() onto it).
 *
 * Stale takeover: a process that finds the lock opens it and keeps it open while it judges the
 * holder (pid plus start time, see LockHolder.procStart). Keeping it open pins the inode: its number
 * cannot be given to another file meanwhile, so "the name still has inode I" really means "it is
 * still the file we judged". To remove a stale lock, the process must first create a *claim*:
 * `.<name>.lock.takeover-<inode>-<mtime>`, by link() again, so one process at most holds the claim of
 * a given stale file. Under the claim it stat()s the name and unlinks it only if the inode is the
 * judged one; then it removes the claim and starts over with link() (which it may lose to anyone).
 *
 * Invariant: a lock file is removed only by its holder (release) or by the one holder of its claim,
 * after checking that the holder is dead. Between the claim holder's stat() and unlink() the name
 * cannot change: link() never replaces, the dead holder releases nothing, and every other remover
 * would need the same claim. So a live lock is never removed, and a live holder's file stays in
 * place until it releases: no second link() can succeed meanwhile. The interleavings that broke the
 * old code (unlink the name after reading it) end up harmless here:
 * - A and B judge the same stale file S. A claims, removes S, drops the claim, creates its lock L.
 *   B, late, claims S's name (free again), stats: the name is L (another inode; S's number cannot
 *   have been reused since B holds S open), so B removes nothing, drops the claim and finds L live.
 * - B finds the claim held by a live process: it waits a moment and starts over (the claim lasts
 *   three system calls).
 * - The claim holder dies inside those calls: its claim stays. It names a dead pid, so it is itself
 *   a stale lock file and is removed by the same protocol one level down (a claim on the claim);
 *   then the next attempt claims S afresh. A claim left after S is gone is never looked at again.
 * Renaming the stale file aside instead (rename() is atomic) is not enough: a late renamer moves a
 * live lock created since, and while it is away a third process can link() its own, so putting it
 * back can fail with two holders already running.
 *
 * Pid reuse: a lock naming a pid that now belongs to another process would look live forever (a
 * refusal, not a double holder); the start time from /proc tells them apart, and a zombie counts as
 * dead. The same process identity guards the claims.
 */

/** How long a takeover waits, in total, for other processes' claims on the same stale lock. */
const TAKEOVER_PATIENCE_MS = 5000;
/** A claim on a claim on ... : each level needs a process killed inside a claim; give up after a few. */
const MAX_CLAIM_DEPTH = 4;

let tmpCounter = 0;

/** A temp file name (`.<base>.tmp-<pid>-<unique>`, which INIT/MANAGE cleanup removes once its pid is dead). */
function tmpName(dir: string, base: string): string {
  return join(dir, `.${base}.tmp-${process.pid}-${Date.now().toString(36)}${(tmpCounter++).toString(36)}`);
}

let ownStart: Promise<string | undefined> | undefined;

/**
 * The start identity of a process (`<boot id>:<start time in ticks>`), undefined where /proc does not
 * say (not Linux, hidden, or the process is gone); `null` for a zombie (dead but not yet reaped).
 */
async function processStart(pid: number): Promise<string | null | undefined> {
  let stat: string;
  let bootId: string;
  try {
    [stat, bootId] = await Promise.all([
      readFile(`/proc/${pid}/stat`, 'utf8'),
      readFile('/proc/sys/kernel/random/boot_id', 'utf8'),
    ]);
  } catch {
    return undefined;
  }
  // "pid (comm) state ... starttime ...": comm may hold spaces and parentheses, so count fields from
  // the last ')'; state is field 3, starttime field 22.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  if (fields[0] === 'Z' || fields[0] === 'X') return null;
  const ticks = fields[19];
  return ticks && /^\d+$/.test(ticks) ? `${bootId.trim()}:${ticks}` : undefined;
}

/** This process's start identity (see {@link LockHolder.procStart}). */
function myStart(): Promise<string | undefined> {
  ownStart ??= processStart(process.pid).then((s) => s ?? undefined);
  return ownStart;
}

/**
 * True while the process that wrote a lock record (pid, and start identity when recorded) runs. A
 * reused pid, or a zombie, is not it.
 */
async function identityAlive(pid: number, procStart: string | undefined): Promise<boolean> {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  const now = await processStart(pid);
  if (now === null) return false;
  if (now !== undefined && procStart !== undefined) return now === procStart;
  return processAlive(pid);
}

/** A lock-like file, opened (which pins its inode, see the protocol above) and read. */
interface OpenedLock<T> {
  fh: FileHandle;
  ino: bigint;
  mtimeNs: bigint;
  /** Its record; undefined when damaged (never half-written, see above, so a damaged one is stale). */
  record: T | undefined;
}

/** Opens and reads a lock-like file; undefined when it does not exist (any more). */
async function openLock<T>(path: string): Promise<OpenedLock<T> | undefined> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    if (isErrnoError(err) && err.code === 'ENOENT') return undefined;
    throw new BartError(`cannot read the lock file ${path}: ${isErrnoError(err) ? err.code : String(err)}`);
  }
  try {
    const st = await fh.stat({ bigint: true });
    let record: T | undefined;
    try {
      // A lock record is a few hundred bytes at most: readFile on it is not "loading a whole file".
      record = JSON.parse(await fh.readFile('utf8')) as T;
      if (record === null || typeof record !== 'object') record = undefined;
    } catch {
      record = undefined;
    }
    return { fh, ino: st.ino, mtimeNs: st.mtimeNs, record };
  } catch (err) {
    await fh.close();
    throw err;
  }
}

/** Writes `content` to a temp file and hard-links it to `path`: true if created, false if `path` exists. */
async function createExclusive(path: string, content: string): Promise<{ created: boolean; ino?: bigint }> {
  const dir = dirname(path);
  const tmp = tmpName(dir, basename(path));
  try {
    await writeFile(tmp, content, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if (isErrnoError(err) && err.code === 'ENOENT') {
      throw new BartError(`catalog directory ${dir} does not exist (run bart INIT for this server first)`);
    }
    throw err;
  }
  try {
    await link(tmp, path);
    const st = await stat(tmp, { bigint: true });
    return { created: true, ino: st.ino };
  } catch (err) {
    if (isErrnoError(err) && err.code === 'EEXIST') return { created: false };
    throw err;
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
}

/**
 * Removes the stale lock-like file `path`, opened as `judged` (its holder found dead), under a claim
 * (see the protocol above). Returns 'done' when `path` no longer is the judged file (removed by us or
 * someone else), 'busy' when a live process holds the claim: start over after a moment.
 */
async function removeStale(path: string, judged: OpenedLock<unknown>, depth: number): Promise<'done' | 'busy'> {
  const claim = join(dirname(path), `.${basename(path)}.takeover-${judged.ino}-${judged.mtimeNs}`);
  const me: LockHolder = { pid: process.pid, command: 'takeover', started: new Date().toISOString() };
  const start = await myStart();
  if (start !== undefined) me.procStart = start;
  if ((await createExclusive(claim, JSON.stringify(me))).created) {
    try {
      let now: bigint | undefined;
      try {
        now = (await stat(path, { bigint: true })).ino;
      } catch (err) {
        if (!isErrnoError(err) || err.code !== 'ENOENT') throw err;
      }
      if (now === judged.ino) await unlink(path);
      return 'done';
    } finally {
      await unlink(claim).catch(() => undefined);
    }
  }
  const other = await openLock<LockHolder>(claim);
  if (!other) return 'busy'; // its holder just finished: look again
  try {
    const r = other.record;
    if (r && (r.pid === process.pid || (await identityAlive(r.pid, r.procStart)))) return 'busy';
    if (depth >= MAX_CLAIM_DEPTH) {
      throw new BartError(`could not take over the stale lock ${path}: leftover takeover claims ${claim}; remove them`);
    }
    await removeStale(claim, other, depth + 1);
    return 'busy';
  } finally {
    await other.fh.close();
  }
}

/**
 * Takes `<dir>/<name>.lock` exclusively (created by link(), so it never exists half-written). A lock
 * whose process is gone is taken over (safely against other processes doing the same: see the
 * protocol above); a live one makes this fail with a message naming the holder.
 */
export async function acquireLock(dir: string, name: string, command: string): Promise<CatalogLock> {
  const path = join(dir, `${name}.lock`);
  const deadline = Date.now() + TAKEOVER_PATIENCE_MS;
  for (;;) {
    const me: LockHolder = { pid: process.pid, command, started: new Date().toISOString() };
    const start = await myStart();
    if (start !== undefined) me.procStart = start;
    const made = await createExclusive(path, JSON.stringify(me));
    if (made.created) {
      return {
        release: async () => {
          // Only our own file: should anything have replaced it, that is not ours to remove.
          const st = await stat(path, { bigint: true }).catch(() => undefined);
          if (st && st.ino === made.ino) await unlink(path).catch(() => undefined);
        },
      };
    }
    const found = await openLock<LockHolder>(path);
    if (!found) continue; // released (or taken over) between our link() and open(): try again
    let outcome: 'done' | 'busy';
    try {
      const holder = found.record;
      if (holder && holder.pid !== process.pid && (await identityAlive(holder.pid, holder.procStart))) {
        throw new BartError(
          `${holder.command} is running for this server (pid ${holder.pid}, started ${holder.started}); ` +
            `try again when it has finished (lock file ${path})`,
        );
      }
      // Stale (its process is dead), unreadable, or our own pid (reused by us): take it over.
      outcome = await removeStale(path, found, 0);
    } finally {
      await found.fh.close();
    }
    if (outcome === 'busy') {
      if (Date.now() > deadline) throw new BartError(`could not take the lock ${path}`);
      await new Promise((r) => setTimeout(r, 2 + Math.random() * 8));
    }
  }
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
export async function acquireServerLock(
  serverDir: string,
  command: string,
  opts: ServerLockOptions = {},
): Promise<CatalogLock> {
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
  /** Start identity of the RESTORE process, as in {@link LockHolder.procStart}. */
  procStart?: string;
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
    const found = await openLock<RestoreReader>(path);
    if (!found) continue;
    try {
      // Written by rename, so never half-written; unreadable means damaged: stale.
      const reader = found.record;
      if (reader && reader.pid === Number(m[1]) && (await identityAlive(reader.pid, reader.procStart))) {
        live.push(reader);
        continue;
      }
      // Removed only if it still is the file judged (held open, so its inode number is not reused):
      // a RESTORE that got the dead one's pid may have registered under the same name meanwhile.
      const now = await stat(path, { bigint: true }).catch(() => undefined);
      if (now?.ino === found.ino) await unlink(path).catch(() => undefined);
    } finally {
      await found.fh.close();
    }
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
export async function registerRestore(
  serverDir: string,
  reader: Omit<RestoreReader, 'pid' | 'started'>,
): Promise<CatalogLock> {
  const me: RestoreReader = { pid: process.pid, started: new Date().toISOString(), ...reader };
  const start = await myStart();
  if (start !== undefined) me.procStart = start;
  const path = join(serverDir, readerFileName(me.pid));
  const tmp = join(serverDir, `.${readerFileName(me.pid)}.tmp-${me.pid}-${Date.now().toString(36)}`);
  try {
    await writeFile(tmp, JSON.stringify(me), { mode: 0o600 });
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    if (isErrnoError(err) && err.code === 'ENOENT')
      throw new BartError(`catalog directory ${serverDir} does not exist (run bart INIT for this server first)`);
    throw err;
  }
  const release = async () => {
    await unlink(path).catch(() => undefined);
  };
  const holder = await serverLockHolder(serverDir);
  if (holder && DELETING_COMMANDS.has(holder.command)) {
    await release();
    throw new BartError(
      `${holder.command} is running for this server (pid ${holder.pid}, started ${holder.started}) and may delete what RESTORE would read; try again when it has finished`,
    );
  }
  return { release };
}

/** The live holder of the server catalog lock, if any (for read-only commands that report it). */
export async function serverLockHolder(serverDir: string): Promise<LockHolder | undefined> {
  const holder = await readHolder(join(serverDir, `${SERVER_LOCK_NAME}.lock`));
  return holder && (await identityAlive(holder.pid, holder.procStart)) ? holder : undefined;
}

/** The live holder of `<dir>/<name>.lock`, if any (the asynchronous archiver's lock: is one running?). */
export async function liveLockHolder(dir: string, name: string): Promise<LockHolder | undefined> {
  const holder = await readHolder(join(dir, `${name}.lock`));
  return holder && (await identityAlive(holder.pid, holder.procStart)) ? holder : undefined;
}
