// Concept: MBMs made at ARCHIVE-PUSH time — a segment just stored in an object store mapped from the local copy the push kept.

import { readdir, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { RepositoryStorage } from '../storage/storage.js';
import { ensureDir } from '../util/fs-atomic.js';
import { errorMessage, isErrnoError } from '../util/errors.js';
import { log } from '../util/log.js';
import { parseArchiveFileName } from '../wal/segment-name.js';
import { encodeMbm } from '../scanner/mbm-format.js';
import { mbmFileName } from '../scanner/mbm-name.js';
import { scanWalFile, type ScanBuffers } from '../scanner/scan-wal-file.js';

/**
 * Segments kept waiting for the next one at most (newest first), and for how long: a segment whose
 * last record continues in a segment that never comes here (a timeline switch, a push that
 * failed) is left to bart-scanner, which fills every gap from the archive itself.
 */
const KEEP_WAITING = 4;
const KEEP_WAITING_MS = 24 * 3600 * 1000;
/** A temp copy older than this belongs to a push that died. */
const STALE_TEMP_MS = 3600 * 1000;

/** Prepares the spool directory; undefined (and a warning) when it cannot be used: archiving goes on without it. */
export async function prepareSpool(dir: string): Promise<string | undefined> {
  try {
    await ensureDir(dir, 0o700);
    return dir;
  } catch (err) {
    log.warning(`cannot use "${dir}" to make MBMs at push time (${errorMessage(err)}); bart-scanner will scan instead`);
    return undefined;
  }
}

/**
 * Scans every segment in the spool directory with the scanner's own code (scanWalFile) and stores
 * the MBMs through the archive storage. A segment whose last record continues in the next one
 * stays until that one arrives (the next push finds it there); one that is done, unreadable, or
 * kept too long is removed. Never throws: the segment is archived whatever happens here, and
 * bart-scanner makes any MBM this misses from the archive.
 */
export async function mapSpooledSegments(
  archive: RepositoryStorage,
  dir: string,
  buffers: ScanBuffers = {},
): Promise<string[]> {
  const written: string[] = [];
  let names: string[];
  try {
    const all = await readdir(dir);
    // Temp copies of pushes killed half way (their segment is re-pushed by PostgreSQL).
    for (const n of all.filter((n) => n.startsWith('.') && n.includes('.tmp-'))) {
      const st = await stat(join(dir, n)).catch(() => undefined);
      if (st !== undefined && Date.now() - st.mtimeMs > STALE_TEMP_MS)
        await unlink(join(dir, n)).catch(() => undefined);
    }
    names = all.filter((n) => parseArchiveFileName(n)?.kind === 'segment').sort();
  } catch (err) {
    log.warning(`cannot read the MBM spool directory "${dir}": ${errorMessage(err)}`);
    return written;
  }
  const waiting: string[] = [];
  for (const name of names) {
    const path = join(dir, name);
    try {
      const r = await scanWalFile(path, { dryRun: true, buffers });
      if (r.status === 'waiting') {
        waiting.push(name);
        continue;
      }
      const mbm = mbmFileName(r.map.timeline, r.map.startLsn, r.map.endLsn);
      // Same segment, same bytes: a second put (a concurrent push) stores the same MBM again.
      await archive.put(mbm, encodeMbm(r.map));
      written.push(mbm);
      log.debug(`mapped ${name} at push time: ${r.map.records} records -> ${mbm}`);
    } catch (err) {
      if (isErrnoError(err) && err.code === 'ENOENT') continue; // mapped by a concurrent push
      log.warning(`no MBM made for ${name} at push time (${errorMessage(err)}); bart-scanner will scan it`);
    }
    await unlink(path).catch(() => undefined);
  }
  // The newest few wait for their next segment; older ones are left to bart-scanner.
  const now = Date.now();
  for (const [i, name] of waiting.reverse().entries()) {
    const path = join(dir, name);
    const st = await stat(path).catch(() => undefined);
    if (st !== undefined && i < KEEP_WAITING && now - st.mtimeMs < KEEP_WAITING_MS) continue;
    await unlink(path).catch(() => undefined);
  }
  return written;
}
