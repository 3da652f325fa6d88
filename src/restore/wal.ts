// Restore WAL: RESTORE -c, the archived WAL a restore can need selected, sized and copied.

import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { BartError, errorMessage, isErrnoError } from '../util/errors.js';
import { parseArchiveFileName, segmentNumberFromName } from '../wal/segment-name.js';
import type { BackupInfo } from '../catalog/backup-info.js';
import { GZIP_SUFFIX } from '../catalog/layout.js';
import { getWalFile } from '../archive/wal-archive.js';

/** An archived file RESTORE -c copies, with its stored size (compressed for `.gz`). */
export interface WalToCopy {
  name: string;
  storedBytes: number;
}

/**
 * The archived WAL a restore of `info` can need: every timeline history file, and the segments from
 * the backup's start segment on, on the backup's timeline and later ones (up to `maxTimeline` when
 * -t names one). Later timelines are included because recovery follows them ('latest' by default).
 */
export async function selectWalToCopy(
  archivePath: string,
  info: BackupInfo,
  maxTimeline?: number,
): Promise<WalToCopy[]> {
  let names: string[];
  try {
    names = await readdir(archivePath);
  } catch (err) {
    if (isErrnoError(err) && err.code === 'ENOENT') return [];
    throw new BartError(`cannot list the WAL archive "${archivePath}": ${errorMessage(err)}`);
  }
  const startSeg = segmentNumberFromName(info.startWalFile, info.walSegmentSize);
  const picked = new Map<string, WalToCopy>();
  for (const stored of names.sort()) {
    const name = stored.endsWith(GZIP_SUFFIX) ? stored.slice(0, -GZIP_SUFFIX.length) : stored;
    const parsed = parseArchiveFileName(name);
    if (!parsed) continue;
    let wanted = false;
    if (parsed.kind === 'history') wanted = true;
    else if (parsed.kind === 'segment') {
      wanted =
        parsed.timeline >= info.timeline &&
        (maxTimeline === undefined || parsed.timeline <= maxTimeline) &&
        segmentNumberFromName(name, info.walSegmentSize) >= startSeg;
    }
    if (!wanted || picked.has(name)) continue;
    const st = await stat(join(archivePath, stored));
    picked.set(name, { name, storedBytes: st.size });
  }
  return [...picked.values()];
}

/** Bytes the copied WAL takes once decompressed (segments are whole; a .gz one expands to a segment). */
export function walCopyBytes(files: WalToCopy[], segmentSize: number): number {
  return files.reduce(
    (sum, f) =>
      sum + (parseArchiveFileName(f.name)?.kind === 'segment' ? Math.max(segmentSize, f.storedBytes) : f.storedBytes),
    0,
  );
}

/** Copies the selected WAL into `destDir` (decompressing .gz), `parallel` files at a time. */
export async function copyWal(
  archivePath: string,
  files: WalToCopy[],
  destDir: string,
  parallel: number,
  signal?: AbortSignal,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < files.length) {
      signal?.throwIfAborted();
      const f = files[next++]!;
      const outcome = await getWalFile(archivePath, f.name, join(destDir, f.name));
      if (outcome === 'missing')
        throw new BartError(`WAL file ${f.name} vanished from the archive "${archivePath}" while it was being copied`);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(parallel, files.length)) }, worker));
}
