// WAL scan: one archived WAL segment decoded into its MBM (from a local file or the archive storage), waiting when its last record continues.

import { existsSync, readdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { crashPoint } from '../util/crash-point.js';
import { writeFileAtomic } from '../util/fs-atomic.js';
import { segmentName } from '../wal/segment-name.js';
import { collectEvents, mayCarryEvent, type WalEvent } from '../wal/relation-events.js';
import { WalDecodeError } from '../wal/decode-error.js';
import { WalDecoder } from '../wal/decoder.js';
import { loadWalFile, loadWalFileLazy, parseWalFileName, walFileSegNo, type LoadedWalFile } from '../wal/file.js';
import { joinKey, type RepositoryStorage } from '../storage/storage.js';
import { findArchivedContinuation, loadArchivedWal } from './archive-source.js';
import type { WalRecord } from '../wal/record.js';
import { encodeMbm } from './mbm-format.js';
import { mbmFileName } from './mbm-name.js';
import { BlockMapBuilder, type ModifiedBlockMap } from './modified-block-map.js';
import { DEFAULT_WAL_SEGMENT_SIZE, isValidWalSegmentSize } from '../postgres/constants.js';

/** Outcome of scanning one WAL segment. */
export type ScanResult =
  | { status: 'written'; mbmPath: string; map: ModifiedBlockMap }
  /** The segment's last record continues in the next segment, which is not in the archive yet. */
  | { status: 'waiting'; nextSegment: string };

/**
 * Buffers reused between scans (two segments: the one scanned and the next one's head, and the
 * decoder's reassembly buffer). One scan at a time may use a set.
 */
export interface ScanBuffers {
  current?: Buffer;
  next?: Buffer;
  /** The decoder's reassembly buffer for records that span pages. */
  reassembly?: Buffer;
}

/** Options of {@link scanWalFile}. */
export interface ScanOptions {
  /** Where to write the MBM (default: next to the WAL file). */
  outDir?: string;
  /** Do not write the MBM, just return it. */
  dryRun?: boolean;
  buffers?: ScanBuffers;
}

/** Finds segment `name` in `dir`, plain or gzip-compressed; undefined when absent. */
export function findSegmentFile(dir: string, name: string): string | undefined {
  for (const candidate of [name, `${name}.gz`]) {
    const p = join(dir, candidate);
    if (existsSync(p)) return p;
  }
  return undefined;
}

/**
 * The file holding the continuation of a record into segment `name` (timeline `timeline`): that
 * segment, else its `.partial` (the timeline ended in it), else the same segment of a later
 * timeline, which starts with a copy of this timeline's WAL up to the switch point.
 */
export function findContinuationFile(dir: string, timeline: number, name: string): string | undefined {
  const direct = findSegmentFile(dir, name);
  if (direct) return direct;
  for (const candidate of [`${name}.partial`, `${name}.partial.gz`]) {
    const p = join(dir, candidate);
    if (existsSync(p)) return p;
  }
  const suffix = name.slice(8);
  let best: string | undefined;
  for (const n of readdirSync(dir)) {
    const f = parseWalFileName(n);
    if (!f || f.partial || f.segmentName.slice(8) !== suffix || f.timeline <= timeline) continue;
    if (!best || n < best) best = n;
  }
  return best ? join(dir, best) : undefined;
}

/**
 * Where a scan reads WAL from: a directory on this host, or the archive storage (archive-source.ts).
 * `name` is a file name in that place; `label` names it in messages.
 */
interface WalSource {
  label(name: string): string;
  load(name: string, reuse?: Buffer, maxBytes?: number): Promise<LoadedWalFile>;
  /** Loads a whole segment; may read only its head and leave the rest to the decoder (`lazy`). */
  loadSegment(name: string, reuse?: Buffer): Promise<LoadedWalFile>;
  findContinuation(timeline: number, name: string): Promise<string | undefined>;
}

/** A directory on this host (the scanner's original source). */
function directorySource(dir: string): WalSource {
  return {
    label: (name) => join(dir, name),
    load: (name, reuse, maxBytes) => loadWalFile(join(dir, name), reuse, maxBytes),
    loadSegment: (name, reuse) => loadWalFileLazy(join(dir, name), reuse),
    findContinuation: async (timeline, name) => {
      const p = findContinuationFile(dir, timeline, name);
      return p === undefined ? undefined : basename(p);
    },
  };
}

/** The archive storage; `names` (a listing taken by the caller) spares a request per lookup. */
function storageSource(storage: RepositoryStorage, names?: Set<string>): WalSource {
  return {
    label: (name) => joinKey(storage.location, name),
    load: (name, reuse, maxBytes) => loadArchivedWal(storage, name, reuse, maxBytes),
    loadSegment: (name, reuse) => loadArchivedWal(storage, name, reuse),
    findContinuation: (timeline, name) => findArchivedContinuation(storage, timeline, name, names),
  };
}

/**
 * Decodes one segment into its MBM (not stored): every block reference and whole-object event of
 * the records that START in this segment. A record that continues into the next segment is
 * finished from that file (only its head is read); when it is not there yet the result is
 * `waiting`. Malformed WAL throws {@link WalDecodeError} (file and offset).
 */
async function mapSegment(
  source: WalSource,
  name: string,
  buffers: ScanBuffers,
): Promise<{ status: 'written'; map: ModifiedBlockMap } | { status: 'waiting'; nextSegment: string }> {
  const label = source.label(name);
  const parsed = parseWalFileName(name);
  if (!parsed)
    throw new WalDecodeError(label, 0, 'not a WAL segment file name (24 hexadecimal digits, optionally .gz)');
  if (parsed.partial)
    throw new WalDecodeError(
      label,
      0,
      "partial segments (.partial) are not scanned: the next timeline's segment holds the same records",
    );
  const builder = new BlockMapBuilder();
  const events: WalEvent[] = [];
  let segStart = 0;
  let currentFile = label;
  const onRecord = (r: WalRecord) => {
    builder.addRecordBlocks(r);
    if (mayCarryEvent(r.rmid, r.info)) {
      events.length = 0;
      if (!collectEvents(r, events)) {
        const off = r.lsn >= segStart ? r.lsn - segStart : 0;
        throw new WalDecodeError(
          currentFile,
          off,
          `main data of the record at LSN ${r.lsn.toString(16)} is too short for its type`,
        );
      }
      for (const e of events) builder.addEvent(e);
    }
  };
  const decoder = new WalDecoder({
    onRecord,
    timeline: parsed.timeline,
    ...(buffers.reassembly ? { reassemblyBuffer: buffers.reassembly } : {}),
  });
  const f = await source.loadSegment(name, buffers.current);
  buffers.current = f.buffer;
  // The decoder validates the first page before the segment size is trusted.
  const segSize = isValidWalSegmentSize(f.segmentSize) ? f.segmentSize : DEFAULT_WAL_SEGMENT_SIZE;
  const segNo = walFileSegNo(parsed.segmentName, segSize);
  segStart = segNo * segSize;
  let res;
  try {
    res = decoder.feedSegment(f.buffer, f.length, segNo, label, f.lazy ? { fill: f.lazy.fill } : {});
  } finally {
    f.lazy?.close();
  }
  buffers.reassembly = decoder.reassemblyBuffer;
  let records = res.records;
  // A record crossing into the next segment is finished from it (only its head is read); a
  // record longer than a segment may need several.
  let nextSegNo = segNo + 1;
  while (decoder.hasPendingRecord) {
    const nextName = segmentName(parsed.timeline, BigInt(nextSegNo), segSize);
    const next = await source.findContinuation(parsed.timeline, nextName);
    if (!next) return { status: 'waiting', nextSegment: nextName };
    currentFile = source.label(next);
    const n = await source.load(next, buffers.next, decoder.pendingBytesNeeded);
    buffers.next = n.buffer;
    records += decoder.feedSegment(n.buffer, n.length, nextSegNo, currentFile, { finishPendingOnly: true }).records;
    buffers.reassembly = decoder.reassemblyBuffer;
    nextSegNo++;
  }
  const segEnd = BigInt(segStart + segSize);
  const map: ModifiedBlockMap = {
    timeline: parsed.timeline,
    startLsn: BigInt(Math.min(res.firstRecordLsn, segStart + segSize)),
    endLsn: segEnd,
    systemId: decoder.systemId ?? 0n,
    segmentSize: segSize,
    walMagic: decoder.version?.magic ?? 0,
    endedWithSwitch: res.status === 'switch',
    records,
    relations: builder.relations(),
    events: builder.events,
  };
  return { status: 'written', map };
}

/**
 * Scans one WAL segment file on this host (plain or `.gz`) and writes its MBM atomically next to
 * it (or into `outDir`): see {@link mapSegment}. A record that continues into the next segment is
 * finished from that file (read from the same directory); when it is not there yet the result is
 * `waiting` and nothing is written. Malformed WAL throws {@link WalDecodeError} and writes nothing.
 */
export async function scanWalFile(path: string, opts: ScanOptions = {}): Promise<ScanResult> {
  const r = await mapSegment(directorySource(dirname(path)), basename(path), opts.buffers ?? {});
  if (r.status === 'waiting') return r;
  const map = r.map;
  const mbmPath = join(opts.outDir ?? dirname(path), mbmFileName(map.timeline, map.startLsn, map.endLsn));
  if (!opts.dryRun) {
    crashPoint('scan:decoded');
    await writeFileAtomic(mbmPath, encodeMbm(map), 0o600);
    crashPoint('scan:mbm-written');
  }
  return { status: 'written', mbmPath, map };
}

/** Options of {@link scanArchivedSegment}. */
export interface ArchiveScanOptions {
  /** Do not store the MBM, just return it. */
  dryRun?: boolean;
  buffers?: ScanBuffers;
  /** The archive's names from one listing (spares a request per lookup on an object store). */
  names?: Set<string>;
}

/**
 * Scans archived segment `key` (plain or `.gz`) and stores its MBM in the archive through the
 * storage; `mbmPath` of the result is then the MBM's key. A POSIX archive takes the file path
 * ({@link scanWalFile}, exactly as before); any other storage is read through the storage, the
 * segment into one bounded buffer (segments are at most 1 GiB), the next one only as far as the
 * record crossing into it needs (a ranged read).
 */
export async function scanArchivedSegment(
  storage: RepositoryStorage,
  key: string,
  opts: ArchiveScanOptions = {},
): Promise<ScanResult> {
  const local = storage.localPath(key);
  if (local !== undefined) {
    const r = await scanWalFile(local, {
      ...(opts.dryRun ? { dryRun: true } : {}),
      ...(opts.buffers ? { buffers: opts.buffers } : {}),
    });
    return r.status === 'written' ? { ...r, mbmPath: basename(r.mbmPath) } : r;
  }
  const r = await mapSegment(storageSource(storage, opts.names), key, opts.buffers ?? {});
  if (r.status === 'waiting') return r;
  const mbmKey = mbmFileName(r.map.timeline, r.map.startLsn, r.map.endLsn);
  if (!opts.dryRun) {
    crashPoint('scan:decoded');
    // An object store makes an object visible only once complete; an MBM is small.
    await storage.put(mbmKey, encodeMbm(r.map));
    crashPoint('scan:mbm-written');
  }
  return { status: 'written', mbmPath: mbmKey, map: r.map };
}
