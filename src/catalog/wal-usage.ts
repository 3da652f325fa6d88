// Concept: WAL usage — the archived WAL each backup's recovery window uses, as SHOW-BACKUPS reports it.

import type { RepositoryStorage } from '../storage/storage.js';
import { parseArchiveFileName, segmentNumberFromName } from '../wal/segment-name.js';
import type { CatalogEntry } from './catalog.js';
import { GZIP_SUFFIX } from './layout.js';
import { DEFAULT_WAL_SEGMENT_SIZE } from '../postgres/constants.js';

/** The archived WAL a backup's recovery window uses: from its start segment to the next backup's. */
export interface BackupWalUsage {
  files: number;
  bytes: number;
  first?: { name: string; mtime: Date };
  last?: { name: string; mtime: Date };
}

/**
 * Counts, for each complete backup, the archived WAL segments from its start segment up to (not
 * including) the next complete backup's start segment: the WAL that SHOW-BACKUPS reports as the
 * backup's WAL(s) SIZE / WAL FILES. Sizes and times come from the WAL archive's listing (one
 * request per 1000 objects on S3, never one per file); an archive that does not exist yet holds none.
 */
export async function walUsageByBackup(
  archive: RepositoryStorage,
  entries: CatalogEntry[],
): Promise<Map<string, BackupWalUsage>> {
  const segments: { name: string; segNo: bigint; size: number; mtime: Date }[] = [];
  const complete = entries.filter((e) => e.complete && e.info.startWalFile !== '');
  const segSize = complete[0]?.info.walSegmentSize ?? DEFAULT_WAL_SEGMENT_SIZE;
  for await (const page of archive.list('', { shallow: true })) {
    for (const o of page.objects) {
      const base = o.key.endsWith(GZIP_SUFFIX) ? o.key.slice(0, -GZIP_SUFFIX.length) : o.key;
      const parsed = parseArchiveFileName(base);
      if (parsed?.kind !== 'segment') continue;
      segments.push({ name: base, segNo: segmentNumberFromName(base, segSize), size: o.size, mtime: o.modified });
    }
  }
  segments.sort((a, b) => (a.segNo < b.segNo ? -1 : a.segNo > b.segNo ? 1 : a.name.localeCompare(b.name)));
  const out = new Map<string, BackupWalUsage>();
  for (let i = 0; i < complete.length; i++) {
    const from = segmentNumberFromName(complete[i]!.info.startWalFile, segSize);
    const next = complete[i + 1];
    const to = next ? segmentNumberFromName(next.info.startWalFile, segSize) : undefined;
    const mine = segments.filter((s) => s.segNo >= from && (to === undefined || s.segNo < to));
    const first = mine[0];
    const last = mine[mine.length - 1];
    out.set(complete[i]!.info.id, {
      files: mine.length,
      bytes: mine.reduce((sum, s) => sum + s.size, 0),
      ...(first ? { first: { name: first.name, mtime: first.mtime } } : {}),
      ...(last ? { last: { name: last.name, mtime: last.mtime } } : {}),
    });
  }
  return out;
}
