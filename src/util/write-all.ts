// Concept: whole writes to local files in calls of at most 1 MiB — larger write(2) calls are many times slower here.
//
// Measured on this machine's kernel (Linux 6.18, ext4): writing 1 GiB from a 4 MiB buffer took 0.3-0.7 s in 1 MiB
// (or 256/512 KiB) write calls and 3.5-13.6 s in 2 or 4 MiB calls, nearly all of it in the kernel copying into the
// page cache. pg_basebackup and pgBackRest write in pieces well under 1 MiB; every local write of pgbart goes
// through here so that none of its callers (4 MiB plain-backup units, 16 MiB WAL segments) pays that.

import { writeSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';

/** The largest single write(2) call. */
export const MAX_WRITE_BYTES = 1024 * 1024;

/** Writes all of `data` to `fd` (at `position`, or at the file offset when undefined). */
export function writeAllSync(fd: number, data: Uint8Array, position?: number): void {
  let done = 0;
  while (done < data.length) {
    const length = Math.min(MAX_WRITE_BYTES, data.length - done);
    done += writeSync(fd, data, done, length, position === undefined ? null : position + done);
  }
}

/** Writes all of `data` to `handle` (at `position`, or at the file offset when undefined). */
export async function writeAll(handle: FileHandle, data: Uint8Array, position?: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const length = Math.min(MAX_WRITE_BYTES, data.length - done);
    const { bytesWritten } = await handle.write(data, done, length, position === undefined ? null : position + done);
    done += bytesWritten;
  }
}
