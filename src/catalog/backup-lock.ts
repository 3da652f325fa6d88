import { open, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { BartError, isErrnoError } from '../util/errors.js';
import { processAlive } from './catalog.js';

/** Who holds a lock. */
interface LockHolder {
  pid: number;
  command: string;
  started: string;
}

/** A held lock; release it when done. */
export interface CatalogLock {
  release(): Promise<void>;
}

/**
 * Takes `<dir>/<name>.lock` exclusively (O_EXCL). A lock whose process is gone is taken over; a
 * live one makes this fail with a message naming the holder.
 */
export async function acquireLock(dir: string, name: string, command: string): Promise<CatalogLock> {
  const path = join(dir, `${name}.lock`);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const handle = await open(path, 'wx', 0o600);
      const holder: LockHolder = { pid: process.pid, command, started: new Date().toISOString() };
      await handle.writeFile(JSON.stringify(holder));
      await handle.close();
      return {
        release: async () => {
          await unlink(path).catch(() => undefined);
        },
      };
    } catch (err) {
      if (!isErrnoError(err) || err.code !== 'EEXIST') throw err;
    }
    let holder: LockHolder | undefined;
    try {
      holder = JSON.parse(await readFile(path, 'utf8')) as LockHolder;
    } catch {
      holder = undefined; // half-written by a process killed at that instant: stale
    }
    if (holder && processAlive(holder.pid) && holder.pid !== process.pid) {
      throw new BartError(`another ${holder.command} is running for this server (pid ${holder.pid}, started ${holder.started}); lock file ${path}`);
    }
    await unlink(path).catch(() => undefined);
  }
  throw new BartError(`could not take the lock ${path}`);
}
