// Path existence: whether a directory entry exists, without following a final symlink.

import { lstat } from 'node:fs/promises';
import { isErrnoError } from './errors.js';

/**
 * True when `path` names a directory entry (lstat: a dangling symlink counts as existing). Only
 * ENOENT means absent; any other error (permission, I/O) is thrown, so it is never taken for "no file".
 */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (err) {
    if (isErrnoError(err) && err.code === 'ENOENT') return false;
    throw err;
  }
}
