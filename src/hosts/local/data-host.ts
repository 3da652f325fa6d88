// Data host (local driver): a data directory on this host, walked and read directly.

import { lstat, open, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { isErrnoError } from '../../util/errors.js';
import type { DataHost, HostEntry, HostFile } from '../data-host.js';

function vanished(err: unknown): boolean {
  return isErrnoError(err) && (err.code === 'ENOENT' || err.code === 'ENOTDIR');
}

/** A data directory on this host, read directly. */
export class LocalHost implements DataHost {
  readonly description = 'local';

  async *walk(root: string): AsyncIterable<HostEntry> {
    yield* this.walkDir(root, '');
  }

  private async *walkDir(root: string, rel: string): AsyncIterable<HostEntry> {
    let names: string[];
    try {
      names = await readdir(join(root, rel));
    } catch (err) {
      if (vanished(err)) return;
      throw err;
    }
    names.sort();
    for (const name of names) {
      const relPath = rel === '' ? name : `${rel}/${name}`;
      const full = join(root, relPath);
      let st;
      try {
        st = await lstat(full);
      } catch (err) {
        if (vanished(err)) continue;
        throw err;
      }
      const base = { path: relPath, size: st.size, mode: st.mode & 0o7777, mtimeMs: st.mtimeMs };
      if (st.isSymbolicLink()) {
        try {
          yield { ...base, type: 'symlink', size: 0, linkTarget: await readlink(full) };
        } catch (err) {
          if (!vanished(err)) throw err;
        }
      } else if (st.isDirectory()) {
        yield { ...base, type: 'dir', size: 0 };
        yield* this.walkDir(root, relPath);
      } else if (st.isFile()) {
        yield { ...base, type: 'file' };
      }
      // sockets, fifos and devices are not part of a backup
    }
  }

  async open(path: string): Promise<HostFile | undefined> {
    try {
      const handle = await open(path, 'r');
      return {
        read: async (buffer, offset, length, position) =>
          (await handle.read(buffer, offset, length, position)).bytesRead,
        close: () => handle.close(),
      };
    } catch (err) {
      if (vanished(err)) return undefined;
      throw err;
    }
  }

  async close(): Promise<void> {}
}
