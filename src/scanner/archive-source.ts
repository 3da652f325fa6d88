// Concept: WAL read from the archive storage for scanning — segments, continuation heads, history files and MBMs, by key.

import { gunzipSync } from 'node:zlib';
import type { Readable } from 'node:stream';
import { PosixStorage } from '../storage/posix/posix-storage.js';
import { joinKey, StorageNotFoundError, type RepositoryStorage } from '../storage/storage.js';
import { BartError, errorMessage } from '../util/errors.js';
import { MAX_WAL_SEGMENT_SIZE } from '../postgres/constants.js';
import { WalDecodeError } from '../wal/decode-error.js';
import { parseWalFileName, WalFileContent, type LoadedWalFile } from '../wal/file.js';
import { historyFileName, parseTimelineHistory, type TimelineSpan } from '../wal/timeline-history.js';
import { decodeMbm } from './mbm-format.js';
import type { ModifiedBlockMap } from './modified-block-map.js';
import { createGunzipStream } from '../util/gunzip.js';

/**
 * A WAL archive as the scanner takes it: its storage, or (callers not migrated yet, tests) a
 * POSIX archive directory.
 */
export type ScanArchive = RepositoryStorage | string;

/** The storage of a {@link ScanArchive}. */
export function scanArchiveStorage(archive: ScanArchive): RepositoryStorage {
  return typeof archive === 'string' ? new PosixStorage(archive) : archive;
}

/** Largest timeline history file read (one line per promotion: kilobytes in practice). */
const MAX_HISTORY_BYTES = 4 * 1024 * 1024;

/** The names in the archive (one listing), for lookups that would otherwise cost a request each. */
export async function archiveNameSet(storage: RepositoryStorage): Promise<Set<string>> {
  const names = new Set<string>();
  for await (const page of storage.list('', { shallow: true })) for (const o of page.objects) names.add(o.key);
  return names;
}

/** Is `key` in the archive? From `names` when given, else a stat. */
async function has(storage: RepositoryStorage, key: string, names: Set<string> | undefined): Promise<boolean> {
  return names !== undefined ? names.has(key) : (await storage.stat(key)) !== undefined;
}

/** The key of segment `name` in the archive, plain or gzip-compressed; undefined when absent. */
export async function findArchivedSegment(
  storage: RepositoryStorage,
  name: string,
  names?: Set<string>,
): Promise<string | undefined> {
  for (const candidate of [name, `${name}.gz`]) if (await has(storage, candidate, names)) return candidate;
  return undefined;
}

/**
 * The key holding the continuation of a record into segment `name` (timeline `timeline`): that
 * segment, else its `.partial` (the timeline ended in it), else the same segment of a later
 * timeline, which starts with a copy of this timeline's WAL up to the switch point.
 */
export async function findArchivedContinuation(
  storage: RepositoryStorage,
  timeline: number,
  name: string,
  names?: Set<string>,
): Promise<string | undefined> {
  const direct = await findArchivedSegment(storage, name, names);
  if (direct) return direct;
  for (const candidate of [`${name}.partial`, `${name}.partial.gz`])
    if (await has(storage, candidate, names)) return candidate;
  const suffix = name.slice(8);
  let best: string | undefined;
  for (const n of names ?? (await archiveNameSet(storage))) {
    const f = parseWalFileName(n);
    if (!f || f.partial || f.segmentName.slice(8) !== suffix || f.timeline <= timeline) continue;
    if (!best || n < best) best = n;
  }
  return best;
}

/**
 * Reads an archived WAL file (gunzipping `.gz`) into `reuse` when it is big enough, else into a new
 * buffer: at most `maxBytes` (a plain file is read with one ranged read of that much, so finishing
 * a record from the next segment reads only its head). Never more than the largest segment size:
 * a larger object is an error, not a memory hazard.
 */
export async function loadArchivedWal(
  storage: RepositoryStorage,
  key: string,
  reuse?: Buffer,
  maxBytes = MAX_WAL_SEGMENT_SIZE,
): Promise<LoadedWalFile> {
  const label = joinKey(storage.location, key);
  const parsed = parseWalFileName(key);
  if (!parsed)
    throw new WalDecodeError(
      label,
      0,
      'not a WAL segment file name (24 hexadecimal digits, optionally .partial and/or .gz)',
    );
  const content = new WalFileContent(reuse, maxBytes);
  let stream: Readable;
  if (parsed.compressed) {
    const raw = await storage.read(key);
    const gunzip = createGunzipStream();
    raw.on('error', (err) => gunzip.destroy(err));
    stream = raw.pipe(gunzip);
  } else {
    const limit = content.limit;
    stream = await storage.read(key, limit < MAX_WAL_SEGMENT_SIZE ? { start: 0, end: limit } : undefined);
  }
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) if (content.append(chunk)) break;
  } catch (err) {
    throw new WalDecodeError(
      label,
      content.length,
      `cannot read${parsed.compressed ? ' or decompress' : ''}: ${errorMessage(err)}`,
    );
  } finally {
    stream.destroy();
  }
  return content.loaded(label, parsed);
}

/** Reads the history of `timeline` from the archive (plain or .gz); timeline 1 has none. */
export async function readArchivedTimelineHistory(
  storage: RepositoryStorage,
  timeline: number,
): Promise<TimelineSpan[]> {
  if (timeline === 1) return [{ timeline: 1, begin: 0n }];
  const name = historyFileName(timeline);
  for (const key of [name, `${name}.gz`]) {
    let data: Buffer;
    try {
      data = await storage.readAll(key, MAX_HISTORY_BYTES);
    } catch (err) {
      if (err instanceof StorageNotFoundError) continue;
      throw new BartError(`cannot read timeline history file ${joinKey(storage.location, key)}: ${errorMessage(err)}`);
    }
    let text: string;
    try {
      text = (key.endsWith('.gz') ? gunzipSync(data, { maxOutputLength: MAX_HISTORY_BYTES }) : data).toString('utf8');
    } catch (err) {
      throw new BartError(
        `cannot decompress timeline history file ${joinKey(storage.location, key)}: ${errorMessage(err)}`,
      );
    }
    return parseTimelineHistory(text, timeline, joinKey(storage.location, key));
  }
  throw new BartError(
    `timeline history file ${name} for timeline ${timeline} is not in the WAL archive ${storage.location}`,
  );
}

/**
 * Largest MBM read for a segment size: an MBM lists at most segmentSize / 4 block references
 * (run-length encoded) plus events, so twice the segment size (and a little) is far beyond any
 * valid one; a larger object is damaged or hostile and must not take the memory.
 */
export function maxMbmBytes(segmentSize: number): number {
  return 2 * segmentSize + 1024 * 1024;
}

/** Reads and parses an MBM from the archive. */
export async function readArchivedMbm(
  storage: RepositoryStorage,
  key: string,
  segmentSize: number,
): Promise<ModifiedBlockMap> {
  const label = joinKey(storage.location, key);
  let buf: Buffer;
  try {
    buf = await storage.readAll(key, maxMbmBytes(segmentSize));
  } catch (err) {
    throw new BartError(`cannot read MBM file "${label}": ${errorMessage(err)}`);
  }
  return decodeMbm(buf, label);
}
