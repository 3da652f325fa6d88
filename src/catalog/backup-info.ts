// Backup info: the backupinfo file of a backup, its fields and statuses, rendered, parsed, read and written.

import type { CompressionMethod } from '../storage/compression.js';
import {
  StorageError,
  StorageNotFoundError,
  joinKey,
  keyBaseName,
  type RepositoryStorage,
} from '../storage/storage.js';
import { errorMessage } from '../util/errors.js';
import { formatBytes, formatTimestamp } from '../util/format.js';
import { isLsn } from '../util/lsn.js';
import { BACKUPINFO_FILE, PARTIAL_SUFFIX } from './layout.js';
import { absolutePathProblem } from '../util/untrusted-path.js';

/**
 * Lifecycle of a backup. `in progress` and `failed` are pgbart's additions to BART's three;
 * `damaged` marks a backup whose backupinfo is missing or fails its checks (never stored).
 */
export type BackupStatus = 'active' | 'obsolete' | 'keep' | 'in progress' | 'failed' | 'damaged';

/** Per-file checksum algorithm (CRC32C, the default, is PostgreSQL's own backup-manifest default). */
export type ChecksumAlgorithm = 'CRC32C' | 'SHA256' | 'MD5' | 'NONE';

/** A tablespace as it was when backed up. */
export interface TablespaceInfo {
  oid: number;
  name: string;
  location: string;
}

/** Everything the catalog knows about one backup (the `backupinfo` file). */
export interface BackupInfo {
  status: BackupStatus;
  /** Epoch milliseconds at backup start, as text (the directory name). */
  id: string;
  name?: string;
  /** Identifier of the parent for incremental backups. */
  parent?: string;
  location: string;
  /** Bytes stored in the catalog for this backup (data and its WAL, after compression). */
  sizeBytes: number;
  /** Bytes of the data directory before compression. */
  dataBytes: number;
  format: 'tar' | 'plain';
  compression: CompressionMethod;
  compressionLevel: number;
  timezone: string;
  xlogMethod: 'fetch' | 'stream';
  checksumAlgorithm: ChecksumAlgorithm;
  /** Checksums of the stored artifacts (tar files) for BART's BACKUP CHECKSUM(s) block. */
  artifactChecksums: { file: string; checksum: string }[];
  tablespaces: TablespaceInfo[];
  timeline: number;
  startWalFile: string;
  stopWalFile: string;
  startLsn: string;
  stopLsn: string;
  checkpointLsn: string;
  /** WAL segments stored inside the backup (first to last). */
  walFiles: string[];
  walBytes: number;
  serverVersionNum: number;
  systemIdentifier: string;
  /**
   * pg_control's data_page_checksum_version when the backup started (0 = off). Absent in backups
   * taken before pgbart recorded it. pg_checksums rewrites every page without WAL, so an
   * incremental whose parent differs here would restore stale pages: it is refused.
   */
  dataChecksumVersion?: number;
  /**
   * Pages whose data checksum failed when BACKUP read them (read twice). Absent when pages were
   * not verified: no data checksums, `--no-verify-checksums`, pg_basebackup, or an older pgbart.
   */
  pageChecksumErrors?: number;
  /** The files with failing pages (paths in the cluster), up to 20 block numbers each, and their count. */
  pageChecksumErrorFiles?: { file: string; blocks: number[]; count: number }[];
  walSegmentSize: number;
  /** `native` or `pg_basebackup`. */
  engine: string;
  threadCount: number;
  startTime: Date;
  stopTime: Date;
  /** For in-progress backups: the process writing it. */
  pid?: number;
}

const DATE_KEY = (k: string) => `${k} (UTC)`;

/** Renders backupinfo in BART's layout, with pgbart's extra fields after BART's. */
export function renderBackupInfo(info: BackupInfo): string {
  const lines: string[] = ['BACKUP DETAILS:'];
  const kv = (k: string, v: string | number) => lines.push(`${k}: ${v}`);
  kv('BACKUP STATUS', info.status);
  kv('BACKUP IDENTIFIER', info.id);
  kv('BACKUP NAME', info.name ?? 'none');
  kv('BACKUP PARENT', info.parent ?? 'none');
  kv('BACKUP LOCATION', info.location);
  kv('BACKUP SIZE', formatBytes(info.sizeBytes));
  kv('BACKUP FORMAT', info.format);
  kv('BACKUP TIMEZONE', info.timezone);
  kv('XLOG METHOD', info.xlogMethod);
  kv('BACKUP CHECKSUM(s)', info.artifactChecksums.length);
  if (info.artifactChecksums.length > 0) {
    lines.push(' ChkSum                                                             File');
    for (const a of info.artifactChecksums) lines.push(` ${a.checksum}  ${a.file}`);
  }
  lines.push('');
  kv('TABLESPACE(s)', info.tablespaces.length);
  if (info.tablespaces.length > 0) {
    lines.push(' Oid\tName\tLocation');
    for (const t of info.tablespaces) lines.push(` ${t.oid}\t${t.name}\t${t.location}`);
  }
  lines.push('');
  kv('START WAL LOCATION', info.startWalFile);
  kv('STOP WAL LOCATION', info.stopWalFile);
  kv('BACKUP METHOD', 'streamed');
  kv('BACKUP FROM', 'master');
  kv('START TIME', formatTimestamp(info.startTime));
  kv('STOP TIME', formatTimestamp(info.stopTime));
  kv(
    'TOTAL DURATION',
    `${Math.max(0, Math.round((info.stopTime.getTime() - info.startTime.getTime()) / 1000))} sec(s)`,
  );
  lines.push('');
  lines.push('PGBART DETAILS:');
  kv('BACKUP SIZE BYTES', info.sizeBytes);
  kv('DATA SIZE BYTES', info.dataBytes);
  kv('COMPRESSION', info.compression);
  kv('COMPRESSION LEVEL', info.compressionLevel);
  kv('CHECKSUM ALGORITHM', info.checksumAlgorithm);
  kv('TIMELINE', info.timeline);
  kv('START LSN', info.startLsn);
  kv('STOP LSN', info.stopLsn);
  kv('CHECKPOINT LOCATION', info.checkpointLsn);
  kv('WAL FILES', info.walFiles.join(',') || 'none');
  kv('WAL SIZE BYTES', info.walBytes);
  kv('SERVER VERSION NUM', info.serverVersionNum);
  kv('SYSTEM IDENTIFIER', info.systemIdentifier);
  if (info.dataChecksumVersion !== undefined) kv('DATA CHECKSUM VERSION', info.dataChecksumVersion);
  if (info.pageChecksumErrors !== undefined) kv('CHECKSUM ERRORS', info.pageChecksumErrors);
  // One line: `file:count:block,block,...` per file, space-separated (relation paths have neither).
  const files = info.pageChecksumErrorFiles ?? [];
  if (files.length > 0) {
    kv('CHECKSUM ERROR FILES', files.map((f) => `${f.file}:${f.count}:${f.blocks.join(',')}`).join(' '));
  }
  kv('WAL SEGMENT SIZE', info.walSegmentSize);
  kv('ENGINE', info.engine);
  kv('THREAD COUNT', info.threadCount);
  kv(DATE_KEY('START TIME'), info.startTime.toISOString());
  kv(DATE_KEY('STOP TIME'), info.stopTime.toISOString());
  if (info.pid !== undefined) kv('PID', info.pid);
  return lines.join('\n') + '\n';
}

/**
 * A backupinfo that cannot be trusted: missing, unreadable or with a field out of its domain.
 * `reason` says what is wrong without the path (SHOW-BACKUPS prints it next to the backup).
 */
export class BackupInfoError extends Error {
  /** What is wrong, e.g. `BACKUP SIZE BYTES is "NaN", not a byte count`. */
  readonly reason: string;

  constructor(source: string, reason: string) {
    super(`${source}: ${reason}`);
    this.name = 'BackupInfoError';
    this.reason = reason;
  }
}

/** Statuses a backupinfo may hold: `in progress` only in a `.partial` directory; `failed`, `damaged` are derived. */
const STORED_STATUSES: readonly BackupStatus[] = ['active', 'obsolete', 'keep'];
const PARTIAL_STATUSES: readonly BackupStatus[] = [...STORED_STATUSES, 'in progress'];
/** A WAL segment file name: timeline, log and segment, 8 upper-case hex digits each. */
const SEGMENT_NAME = /^[0-9A-F]{24}$/;
const ISO_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,3})?Z$/;
/** Far more than any backupinfo (a long WAL FILES list included): a bigger file is not one. */
const MAX_BACKUPINFO_BYTES = 16 * 1024 * 1024;

/** A field value for a message: quoted, escaped (no control characters reach the terminal), shortened. */
function shown(value: string): string {
  return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}...` : value);
}

/** Options of {@link parseBackupInfo}. */
export interface ParseBackupInfoOptions {
  /**
   * The backupinfo of a `.partial` directory: BACKUP writes it before the start LSN, WAL location
   * and timeline are known (empty, 0) and with status `in progress`.
   */
  partial?: boolean;
}

/**
 * Parses a backupinfo file's text and checks every field against its domain (statuses, formats,
 * integers, LSNs, WAL file names, times, the checksum and tablespace blocks against their counts):
 * the catalog is read by every command, and a damaged or hand-edited file must not reach them as
 * NaN sizes, unknown statuses or identifiers BigInt cannot read. Throws a {@link BackupInfoError}
 * naming the first field at fault.
 */
export function parseBackupInfo(text: string, source: string, options: ParseBackupInfoOptions = {}): BackupInfo {
  const partial = options.partial === true;
  const fail = (reason: string): never => {
    throw new BackupInfoError(source, reason);
  };
  if (text.includes('\0')) fail('holds NUL bytes (not a backupinfo text file)');
  const fields = new Map<string, string>();
  const artifactChecksums: { file: string; checksum: string }[] = [];
  const tablespaces: TablespaceInfo[] = [];
  let block: 'none' | 'checksums' | 'tablespaces' = 'none';
  for (const line of text.split('\n')) {
    if (line.startsWith(' ')) {
      const body = line.slice(1);
      if (block === 'checksums' && !body.startsWith('ChkSum')) {
        const m = /^([0-9A-Za-z_:+-]+)\s+([^/\s]+)$/.exec(body);
        if (!m || m[2] === '.' || m[2] === '..') fail(`bad line in BACKUP CHECKSUM(s): ${shown(body)}`);
        artifactChecksums.push({ checksum: m![1]!, file: m![2]! });
      } else if (block === 'tablespaces' && !body.startsWith('Oid\t')) {
        const [oid, name, location, extra] = body.split('\t');
        const ok = oid !== undefined && /^\d{1,10}$/.test(oid) && Number(oid) > 0 && Number(oid) <= 0xffffffff;
        if (!ok || !name || absolutePathProblem(location) || extra !== undefined) {
          fail(`bad line in TABLESPACE(s): ${shown(body)}`);
        }
        tablespaces.push({ oid: Number(oid), name: name!, location: location! });
      } else if (block === 'none' && body.trim() !== '') {
        fail(`unexpected indented line ${shown(body)}`);
      }
      continue;
    }
    const idx = line.indexOf(': ');
    if (idx < 0) continue;
    const key = line.slice(0, idx);
    fields.set(key, line.slice(idx + 2));
    block = key === 'BACKUP CHECKSUM(s)' ? 'checksums' : key === 'TABLESPACE(s)' ? 'tablespaces' : 'none';
  }
  const get = (k: string): string => {
    const v = fields.get(k);
    if (v === undefined) fail(`missing "${k}"`);
    return v!;
  };
  const optional = (k: string): string | undefined => {
    const v = fields.get(k);
    return v === undefined || v === 'none' ? undefined : v;
  };
  const int = (k: string, min: number, max: number, raw = get(k)): number => {
    const n = Number(raw);
    if (!/^\d{1,16}$/.test(raw) || !Number.isSafeInteger(n) || n < min || n > max) {
      fail(`${k} is ${shown(raw)}, not an integer from ${min} to ${max}`);
    }
    return n;
  };
  const oneOf = <T extends string>(k: string, allowed: readonly T[]): T => {
    const v = get(k);
    if (!(allowed as readonly string[]).includes(v)) fail(`${k} is ${shown(v)}, not one of ${allowed.join(', ')}`);
    return v as T;
  };
  // A partial backupinfo is written before the backup starts: these are still empty then.
  const walName = (k: string): string => {
    const v = get(k);
    if (!(SEGMENT_NAME.test(v) || (partial && v === ''))) fail(`${k} is ${shown(v)}, not a WAL file name`);
    return v;
  };
  const lsn = (k: string): string => {
    const v = get(k);
    if (!(isLsn(v) || (partial && v === ''))) fail(`${k} is ${shown(v)}, not an LSN`);
    return v;
  };
  const time = (k: string): Date => {
    const v = get(k);
    const d = new Date(v);
    if (!ISO_TIME.test(v) || Number.isNaN(d.getTime())) fail(`${k} is ${shown(v)}, not an ISO 8601 UTC time`);
    return d;
  };
  const MAX_BYTES = Number.MAX_SAFE_INTEGER;

  const status = oneOf('BACKUP STATUS', partial ? PARTIAL_STATUSES : STORED_STATUSES);
  const id = get('BACKUP IDENTIFIER');
  if (!/^\d{1,20}$/.test(id)) fail(`BACKUP IDENTIFIER is ${shown(id)}, not a backup identifier (digits)`);
  const name = optional('BACKUP NAME');
  const badName = (n: string) =>
    n.length > 64 || /[\s/,\\\p{Cc}]/u.test(n) || /^\d+$/.test(n) || n.toLowerCase() === 'all';
  if (name !== undefined && badName(name)) fail(`BACKUP NAME is ${shown(name)}, not a backup name`);
  const parent = optional('BACKUP PARENT');
  if (parent !== undefined && (!/^\d{1,20}$/.test(parent) || parent === id)) {
    fail(`BACKUP PARENT is ${shown(parent)}, not another backup's identifier`);
  }
  const checksumCount = int('BACKUP CHECKSUM(s)', 0, 1_000_000);
  if (checksumCount !== artifactChecksums.length) {
    fail(`BACKUP CHECKSUM(s) is ${checksumCount} but ${artifactChecksums.length} are listed`);
  }
  const tablespaceCount = int('TABLESPACE(s)', 0, 1_000_000);
  if (tablespaceCount !== tablespaces.length) {
    fail(`TABLESPACE(s) is ${tablespaceCount} but ${tablespaces.length} are listed`);
  }
  const walFiles = get('WAL FILES');
  const walList = walFiles === 'none' ? [] : walFiles.split(',');
  for (const w of walList) {
    if (!/^[0-9A-F]{24}(\.[0-9A-Za-z.]+)?$/.test(w)) fail(`WAL FILES lists ${shown(w)}, not a WAL file name`);
  }
  const segmentSize = int('WAL SEGMENT SIZE', 1024 * 1024, 1024 * 1024 * 1024);
  if ((segmentSize & (segmentSize - 1)) !== 0) fail(`WAL SEGMENT SIZE is ${segmentSize}, not a power of two`);
  const dataChecksumVersion = optional('DATA CHECKSUM VERSION');
  const pid = fields.get('PID');
  const startTime = time(DATE_KEY('START TIME'));
  const stopTime = time(DATE_KEY('STOP TIME'));
  const location = get('BACKUP LOCATION');
  const timezone = get('BACKUP TIMEZONE');
  const systemIdentifier = get('SYSTEM IDENTIFIER');
  if (!/^\d{1,20}$/.test(systemIdentifier)) {
    fail(`SYSTEM IDENTIFIER is ${shown(systemIdentifier)}, not a system identifier (digits)`);
  }
  const errorFiles = optional('CHECKSUM ERROR FILES');
  const checksumErrors = optional('CHECKSUM ERRORS');
  return {
    status,
    id,
    ...(name !== undefined ? { name } : {}),
    ...(parent !== undefined ? { parent } : {}),
    location,
    sizeBytes: int('BACKUP SIZE BYTES', 0, MAX_BYTES),
    dataBytes: int('DATA SIZE BYTES', 0, MAX_BYTES),
    format: oneOf('BACKUP FORMAT', ['tar', 'plain'] as const),
    compression: oneOf<CompressionMethod>('COMPRESSION', ['none', 'gzip', 'lz4', 'zstd']),
    compressionLevel: int('COMPRESSION LEVEL', 0, 22),
    timezone,
    xlogMethod: oneOf('XLOG METHOD', ['fetch', 'stream'] as const),
    checksumAlgorithm: oneOf<ChecksumAlgorithm>('CHECKSUM ALGORITHM', ['CRC32C', 'SHA256', 'MD5', 'NONE']),
    artifactChecksums,
    tablespaces,
    timeline: int('TIMELINE', partial ? 0 : 1, 0xffffffff),
    startWalFile: walName('START WAL LOCATION'),
    stopWalFile: walName('STOP WAL LOCATION'),
    startLsn: lsn('START LSN'),
    stopLsn: lsn('STOP LSN'),
    checkpointLsn: lsn('CHECKPOINT LOCATION'),
    walFiles: walList,
    walBytes: int('WAL SIZE BYTES', 0, MAX_BYTES),
    serverVersionNum: int('SERVER VERSION NUM', 1, 99_999_999),
    systemIdentifier,
    ...(dataChecksumVersion !== undefined
      ? { dataChecksumVersion: int('DATA CHECKSUM VERSION', 0, 255, dataChecksumVersion) }
      : {}),
    ...(checksumErrors !== undefined
      ? { pageChecksumErrors: int('CHECKSUM ERRORS', 0, MAX_BYTES, checksumErrors) }
      : {}),
    ...(errorFiles !== undefined ? { pageChecksumErrorFiles: parseErrorFiles(errorFiles) } : {}),
    walSegmentSize: segmentSize,
    engine: oneOf('ENGINE', ['native', 'pg_basebackup']),
    threadCount: int('THREAD COUNT', 1, 65_536),
    startTime,
    stopTime,
    ...(pid ? { pid: int('PID', 1, 0x7fffffff, pid) } : {}),
  };
}

/** Parses CHECKSUM ERROR FILES (`file:count:block,block ...`); malformed items are left out. */
function parseErrorFiles(text: string): { file: string; blocks: number[]; count: number }[] {
  const out: { file: string; blocks: number[]; count: number }[] = [];
  for (const item of text.split(' ')) {
    const m = /^([^:]+):(\d+):([\d,]*)$/.exec(item);
    if (m) out.push({ file: m[1]!, count: Number(m[2]), blocks: m[3] === '' ? [] : m[3]!.split(',').map(Number) });
  }
  return out;
}

/**
 * Reads `<dirKey>/backupinfo` from `storage` and checks it (see {@link parseBackupInfo}), also against
 * its directory: its identifier must be the directory's name (`<id>` or `<id>.partial`); a copied
 * directory would otherwise give two backups one identifier. Throws a {@link BackupInfoError}.
 */
export async function readBackupInfo(storage: RepositoryStorage, dirKey: string): Promise<BackupInfo> {
  const key = joinKey(dirKey, BACKUPINFO_FILE);
  const path = joinKey(storage.location, key);
  const dirName = keyBaseName(dirKey);
  const partial = dirName.endsWith(PARTIAL_SUFFIX);
  const dirId = partial ? dirName.slice(0, -PARTIAL_SUFFIX.length) : dirName;
  let text: string;
  try {
    // A backupinfo is small; a huge file is damage, and is not read into memory.
    text = (await storage.readAll(key, MAX_BACKUPINFO_BYTES)).toString('utf8');
  } catch (err) {
    if (err instanceof StorageNotFoundError) throw new BackupInfoError(path, 'backupinfo is missing');
    if (err instanceof StorageError && /more than the/.test(err.message))
      throw new BackupInfoError(path, 'too big for a backupinfo');
    throw new BackupInfoError(path, `backupinfo cannot be read (${errorMessage(err)})`);
  }
  const info = parseBackupInfo(text, path, { partial });
  if (/^\d+$/.test(dirId) && info.id !== dirId) {
    const reason = `BACKUP IDENTIFIER is ${info.id} but the directory is ${dirName} (a copied or renamed backup)`;
    throw new BackupInfoError(path, reason);
  }
  return info;
}

/**
 * The WAL fields of a backupinfo before (or without) a backup's start and stop: timeline 0, empty
 * WAL file names and LSNs, no WAL stored. A new object each call, so its `walFiles` is never shared.
 */
export function noWalRange(): Pick<
  BackupInfo,
  'timeline' | 'startWalFile' | 'stopWalFile' | 'startLsn' | 'stopLsn' | 'checkpointLsn' | 'walFiles' | 'walBytes'
> {
  return {
    timeline: 0,
    startWalFile: '',
    stopWalFile: '',
    startLsn: '',
    stopLsn: '',
    checkpointLsn: '',
    walFiles: [],
    walBytes: 0,
  };
}

/**
 * The stand-in backupinfo of a damaged backup (status `damaged`): its identifier is the directory's
 * name, its start time the one that identifier encodes; every other field is empty or zero. Nothing
 * of the damaged file is taken over: no command may act on it.
 */
export function damagedBackupInfo(id: string, location: string): BackupInfo {
  const encoded = new Date(Number(id));
  const time = Number.isNaN(encoded.getTime()) ? new Date(0) : encoded;
  return {
    status: 'damaged',
    id,
    location,
    sizeBytes: 0,
    dataBytes: 0,
    format: 'tar',
    compression: 'none',
    compressionLevel: 0,
    timezone: 'UTC',
    xlogMethod: 'fetch',
    checksumAlgorithm: 'NONE',
    artifactChecksums: [],
    tablespaces: [],
    ...noWalRange(),
    serverVersionNum: 0,
    systemIdentifier: '',
    walSegmentSize: 16 * 1024 * 1024,
    engine: '',
    threadCount: 0,
    startTime: time,
    stopTime: time,
  };
}

/** Writes `<dirKey>/backupinfo` atomically and durably (readers see the old or the whole new one). */
export async function writeBackupInfo(storage: RepositoryStorage, dirKey: string, info: BackupInfo): Promise<void> {
  await storage.put(joinKey(dirKey, BACKUPINFO_FILE), Buffer.from(renderBackupInfo(info)));
}
