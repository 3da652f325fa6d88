// Restore WAL (ssh driver): RESTORE -c sending archived WAL files to a remote target, .gz decompressed.

import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { BartError, isErrnoError } from '../../util/errors.js';
import type { RestoreTarget } from '../restore-target.js';

/**
 * RESTORE -c to a remote target: sends archived WAL files (decompressing `.gz` ones, which hold at
 * most one segment) into `destDir` on the target, one after the other on its upload stream.
 */
export async function uploadWalFiles(
  target: RestoreTarget,
  archivePath: string,
  names: string[],
  destDir: string,
): Promise<void> {
  for (const name of names) {
    const plain = join(archivePath, name);
    let size: number;
    try {
      size = (await stat(plain)).size;
    } catch (err) {
      if (!(isErrnoError(err) && err.code === 'ENOENT')) throw err;
      let data: Buffer;
      try {
        data = gunzipSync(await readFile(plain + '.gz'));
      } catch (e) {
        if (isErrnoError(e) && e.code === 'ENOENT')
          throw new BartError(`WAL file ${name} vanished from the archive "${archivePath}" while it was being copied`);
        throw e;
      }
      const w = await target.openWriter(join(destDir, name), 0o600, data.length);
      await w.write(data);
      await w.finish();
      continue;
    }
    const w = await target.openWriter(join(destDir, name), 0o600, size);
    let sent = 0;
    try {
      for await (const chunk of createReadStream(plain, { highWaterMark: 1024 * 1024 })) {
        const piece = (chunk as Buffer).subarray(0, Math.max(0, size - sent));
        sent += piece.length;
        if (piece.length > 0) await w.write(piece);
      }
      if (sent !== size) throw new BartError(`WAL file ${name} shrank while it was being copied`);
      await w.finish();
    } catch (err) {
      await w.abort();
      throw err;
    }
  }
}
