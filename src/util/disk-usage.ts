// Disk usage: total size of the regular files under a path, symlinks not followed.

import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { BartError, errorMessage, isErrnoError } from './errors.js';

/**
 * Total size in bytes of the regular files under `path` (symlinks are not followed, so a catalog
 * never counts another tree twice). A missing path is 0 bytes: a server not yet initialised uses nothing.
 */
export async function diskUsage(path: string): Promise<number> {
  let st;
  try {
    st = await lstat(path);
  } catch (err) {
    if (isErrnoError(err) && err.code === 'ENOENT') return 0;
    throw new BartError(`cannot measure disk usage of "${path}": ${errorMessage(err)}`);
  }
  if (st.isFile()) return st.size;
  if (!st.isDirectory()) return 0;
  let total = 0;
  // Iterative walk: catalogs can be deep (plain-format backups hold whole data directories).
  const pending = [path];
  while (pending.length > 0) {
    const dir = pending.pop()!;
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch (err) {
      // A file or directory removed while we walk (MANAGE, a finishing backup) is simply gone.
      if (isErrnoError(err) && err.code === 'ENOENT') continue;
      throw new BartError(`cannot measure disk usage of "${dir}": ${errorMessage(err)}`);
    }
    for (const entry of entries) {
      const child = join(dir, entry.name);
      if (entry.isDirectory()) pending.push(child);
      else if (entry.isFile()) {
        try {
          total += (await lstat(child)).size;
        } catch (err) {
          if (!(isErrnoError(err) && err.code === 'ENOENT'))
            throw new BartError(`cannot stat "${child}": ${errorMessage(err)}`);
        }
      }
    }
  }
  return total;
}
