// Scanner pid file: the bart-scanner pid file, read as untrusted input, created and removed safely.

/**
 * The bart-scanner pid file, handled as untrusted input: it lives in a directory others may be able
 * to write to (an explicit bart_socket_directory such as /tmp), and the pid in it may have been
 * reused by another process since the scanner died. Nothing is signalled or removed on its word
 * alone.
 */
import {
  closeSync,
  constants,
  fstatSync,
  lstatSync,
  openSync,
  readFileSync,
  readSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { BartError, errorMessage, isErrnoError } from '../util/errors.js';
import { effectiveUid } from './paths.js';

/** A pid file holds one decimal number and a newline; anything longer is not ours. */
const MAX_PID_FILE_BYTES = 32;

/** Thrown by {@link readPidFile} for a trustworthy file that holds no pid (e.g. a crash before the write). */
class NoPidInFile extends BartError {}

/** The error for a pid file that is not to be trusted: what is wrong with it, and the fix. */
function untrusted(path: string, what: string): BartError {
  return new BartError(`the scanner pid file "${path}" ${what}: refusing to use it (remove it)`);
}

/**
 * Reads the pid file after checking that it is a regular file (not a symlink) owned by the
 * effective user and not writable by group or others. Returns undefined when there is none;
 * throws BartError naming the fault otherwise.
 */
export function readPidFile(path: string): number | undefined {
  let fd: number;
  try {
    // O_NOFOLLOW: a symlink fails with ELOOP instead of leading to another file.
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    if (isErrnoError(err) && err.code === 'ENOENT') return undefined;
    if (isErrnoError(err) && err.code === 'ELOOP') throw untrusted(path, 'is a symbolic link');
    throw new BartError(`cannot read the scanner pid file "${path}": ${errorMessage(err)}`);
  }
  try {
    // fstat of the open file: what is checked is what is read.
    const st = fstatSync(fd);
    if (!st.isFile()) throw untrusted(path, 'is not a regular file');
    const uid = effectiveUid();
    if (st.uid !== uid) throw untrusted(path, `belongs to uid ${st.uid}, not to the BART user (uid ${uid})`);
    if ((st.mode & 0o022) !== 0) throw untrusted(path, `is writable by others (mode ${(st.mode & 0o777).toString(8)})`);
    const buf = Buffer.alloc(MAX_PID_FILE_BYTES + 1);
    const n = readSync(fd, buf, 0, buf.length, 0);
    const text = buf.toString('ascii', 0, n);
    const pid = Number(text.trim());
    if (n > MAX_PID_FILE_BYTES || !/^[1-9][0-9]{0,9}\n?$/.test(text) || pid > 0x3fffffff) {
      throw new NoPidInFile(`the scanner pid file "${path}" does not hold a process id`);
    }
    return pid;
  } finally {
    closeSync(fd);
  }
}

/** What /proc says about a process. */
export interface ProcessCheck {
  alive: boolean;
  /** Alive, owned by the effective user and running bart-scanner. */
  isOurScanner: boolean;
  /** Why it is not our scanner (for messages). */
  reason?: string;
}

/** True when /proc is mounted (Linux), so processes can be inspected. */
export function canInspectProcesses(): boolean {
  try {
    return statSync('/proc/self').isDirectory();
  } catch {
    return false;
  }
}

/**
 * Whether `pid` is a bart-scanner of the effective user: its effective uid (/proc/<pid>/status) is
 * ours and its command line names bart-scanner. Without /proc only liveness can be told
 * (isOurScanner false).
 */
export function inspectProcess(pid: number): ProcessCheck {
  if (!canInspectProcesses()) {
    try {
      process.kill(pid, 0);
      return { alive: true, isOurScanner: false, reason: 'cannot inspect processes without /proc' };
    } catch (err) {
      return isErrnoError(err) && err.code === 'EPERM'
        ? { alive: true, isOurScanner: false, reason: 'it belongs to another user' }
        : { alive: false, isOurScanner: false };
    }
  }
  let uid: number;
  let cmdline: string;
  try {
    // Not the owner of /proc/<pid>: a process that switched users in place (bart-scanner started
    // as root in the foreground) is not dumpable, and its /proc entries then belong to root.
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = /^Uid:\s+\d+\s+(\d+)/m.exec(status);
    if (!m) return { alive: true, isOurScanner: false, reason: 'its /proc status has no Uid line' };
    uid = Number(m[1]);
    cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch (err) {
    const gone = isErrnoError(err) && (err.code === 'ENOENT' || err.code === 'ESRCH');
    if (gone) return { alive: false, isOurScanner: false };
    return { alive: true, isOurScanner: false, reason: `cannot inspect it: ${errorMessage(err)}` };
  }
  // A zombie has an empty command line: it is gone for our purposes.
  if (cmdline === '') return { alive: false, isOurScanner: false };
  const me = effectiveUid();
  if (uid !== me) {
    return { alive: true, isOurScanner: false, reason: `it runs as uid ${uid}, not as the BART user (uid ${me})` };
  }
  const args = cmdline.split('\0');
  if (!args.some((a) => /bart-scanner(\.[cm]?js)?$/.test(a))) {
    const shown = args
      .filter((a) => a !== '')
      .join(' ')
      .slice(0, 80);
    return { alive: true, isOurScanner: false, reason: `it is not bart-scanner (${shown})` };
  }
  return { alive: true, isOurScanner: true };
}

/**
 * Creates the pid file with O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600 (never through a symlink, never
 * over someone else's file). An existing one is removed first only when it passes
 * {@link readPidFile}'s ownership checks and its process is gone or is not a bart-scanner (pid
 * reused); one naming a live bart-scanner of ours means one is already running.
 */
export function createPidFile(path: string): void {
  for (let attempt = 0; ; attempt++) {
    let fd: number;
    try {
      fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    } catch (err) {
      if (!isErrnoError(err) || err.code !== 'EEXIST' || attempt > 0) {
        throw new BartError(`cannot create the scanner pid file "${path}": ${errorMessage(err)}`);
      }
      // O_EXCL fails with EEXIST on a symlink too (dangling or not); readPidFile names it.
      const lst = lstatSync(path, { throwIfNoEntry: false });
      if (lst?.isSymbolicLink()) throw untrusted(path, 'is a symbolic link');
      let old: number | undefined;
      try {
        old = readPidFile(path);
      } catch (e) {
        // Ours, but empty or garbled (a crash between create and write): stale like a dead pid.
        if (!(e instanceof NoPidInFile)) throw e;
      }
      if (old !== undefined) {
        const p = inspectProcess(old);
        if (p.isOurScanner && old !== process.pid) {
          throw new BartError(`bart-scanner is already running (pid ${old}, pid file "${path}")`);
        }
      }
      unlinkSync(path);
      continue;
    }
    try {
      writeSync(fd, `${process.pid}\n`);
    } finally {
      closeSync(fd);
    }
    return;
  }
}

/** Removes the pid file if it is still ours and names this process (not a successor's). */
export function removeOwnPidFile(path: string): void {
  try {
    if (readPidFile(path) === process.pid) unlinkSync(path);
  } catch {
    // Not ours any more, or gone: leave it.
  }
}
