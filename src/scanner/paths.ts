// Scanner paths: the directory of the bart-scanner socket and pid file, and their names.

import { chmodSync, lstatSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { BartConfig } from '../config/types.js';
import { BartError, errorMessage, isErrnoError } from '../util/errors.js';

/** Default socket file name when bart_socket_name is not set. */
export const DEFAULT_SOCKET_NAME = 'bart_scanner.sock';

/**
 * Where the per-user default socket directory lives. A literal `/tmp`, not `os.tmpdir()`: bart and
 * bart-scanner may run with different TMPDIR values and must still meet at the same socket.
 */
const DEFAULT_SOCKET_PARENT = '/tmp';

/** Effective uid of this process (the BART user once bootstrap has switched to it). */
export function effectiveUid(): number {
  return process.geteuid?.() ?? process.getuid?.() ?? 0;
}

/**
 * Directory of the scanner's socket and pid file: bart_socket_directory when set (used as is),
 * else `/tmp/bart-<uid>` of the user running this process. BART's default was `/tmp` itself, where
 * anyone can plant a pid file or a socket; a private 0700 directory per user leaves no such room.
 * Called after bootstrap has switched to the BART user, so the uid is that user's.
 */
export function scannerSocketDirectory(config: BartConfig): string {
  return config.global.bartSocketDirectory ?? join(DEFAULT_SOCKET_PARENT, `bart-${effectiveUid()}`);
}

/** Unix socket of the running bart-scanner: the socket directory / (bart_socket_name or default). */
export function scannerSocketPath(config: BartConfig): string {
  return join(scannerSocketDirectory(config), config.global.bartSocketName ?? DEFAULT_SOCKET_NAME);
}

/** Pid file of the running bart-scanner, next to its socket. */
export function scannerPidPath(config: BartConfig): string {
  return join(scannerSocketDirectory(config), 'bart_scanner.pid');
}

/**
 * Makes sure `dir` is a private directory of the effective user: creates it with mode 0700 when
 * `create` is set and it is missing, sets the mode back to 0700 when we own it but it is looser,
 * and refuses (BartError) a symlink, a non-directory, or a directory owned by someone else, since
 * whoever controls the directory controls the pid file and socket in it. Returns false when the
 * directory does not exist and `create` is not set (no scanner can be running then).
 */
export function ensurePrivateDirectory(dir: string, create: boolean): boolean {
  if (create) {
    try {
      mkdirSync(dir, { mode: 0o700 });
    } catch (err) {
      if (!isErrnoError(err) || err.code !== 'EEXIST') {
        throw new BartError(`cannot create the scanner socket directory "${dir}": ${errorMessage(err)}`);
      }
    }
  }
  let st;
  try {
    // lstat: a symlink planted under the predictable name must not lead us elsewhere.
    st = lstatSync(dir);
  } catch (err) {
    if (isErrnoError(err) && err.code === 'ENOENT' && !create) return false;
    throw new BartError(`cannot check the scanner socket directory "${dir}": ${errorMessage(err)}`);
  }
  const uid = effectiveUid();
  if (st.isSymbolicLink() || !st.isDirectory()) {
    throw new BartError(
      `the scanner socket directory "${dir}" is not a directory (remove it, or set bart_socket_directory)`,
    );
  }
  if (st.uid !== uid) {
    throw new BartError(
      `the scanner socket directory "${dir}" belongs to uid ${st.uid}, not to the BART user (uid ${uid}): ` +
        'remove it, or set bart_socket_directory',
    );
  }
  if ((st.mode & 0o777) !== 0o700) {
    try {
      chmodSync(dir, 0o700);
    } catch (err) {
      const why = errorMessage(err);
      throw new BartError(`cannot make the scanner socket directory "${dir}" private (mode 0700): ${why}`);
    }
  }
  return true;
}

/**
 * Checks (and with `create`, makes) the default per-user socket directory before its pid file or
 * socket is trusted; an explicit bart_socket_directory is the administrator's choice and is used as
 * is. Returns false when the default directory does not exist and `create` is not set.
 */
export function prepareSocketDirectory(config: BartConfig, create: boolean): boolean {
  if (config.global.bartSocketDirectory !== undefined) return true;
  return ensurePrivateDirectory(scannerSocketDirectory(config), create);
}
