import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { CompressionMethod } from '../storage/compression.js';
import { writeFileAtomic } from '../util/fs-atomic.js';
import { formatBytes, formatTimestamp } from '../util/format.js';
import { BACKUPINFO_FILE } from './layout.js';

/** Lifecycle of a backup. `in progress` and `failed` are pgbart's additions to BART's three. */
export type BackupStatus = 'active' | 'obsolete' | 'keep' | 'in progress' | 'failed';

/** Per-file checksum algorithm. */
export type ChecksumAlgorithm = 'SHA256' | 'MD5' | 'NONE';

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
  kv('TOTAL DURATION', `${Math.max(0, Math.round((info.stopTime.getTime() - info.startTime.getTime()) / 1000))} sec(s)`);
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

/** Parses a backupinfo file's text; throws an Error naming the missing field. */
export function parseBackupInfo(text: string, source: string): BackupInfo {
  const fields = new Map<string, string>();
  const artifactChecksums: { file: string; checksum: string }[] = [];
  const tablespaces: TablespaceInfo[] = [];
  let block: 'none' | 'checksums' | 'tablespaces' = 'none';
  for (const line of text.split('\n')) {
    if (line.startsWith(' ')) {
      const body = line.slice(1);
      if (block === 'checksums' && !body.startsWith('ChkSum')) {
        const m = /^(\S+)\s+(.+)$/.exec(body);
        if (m) artifactChecksums.push({ checksum: m[1]!, file: m[2]! });
      } else if (block === 'tablespaces' && !body.startsWith('Oid\t')) {
        const [oid, name, location] = body.split('\t');
        if (oid && name !== undefined && location !== undefined) tablespaces.push({ oid: Number(oid), name, location });
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
    if (v === undefined) throw new Error(`${source}: missing "${k}"`);
    return v;
  };
  const optional = (k: string): string | undefined => {
    const v = fields.get(k);
    return v === undefined || v === 'none' ? undefined : v;
  };
  const walFiles = get('WAL FILES');
  const pid = fields.get('PID');
  const errorFiles = optional('CHECKSUM ERROR FILES');
  return {
    status: get('BACKUP STATUS') as BackupStatus,
    id: get('BACKUP IDENTIFIER'),
    ...(optional('BACKUP NAME') ? { name: optional('BACKUP NAME')! } : {}),
    ...(optional('BACKUP PARENT') ? { parent: optional('BACKUP PARENT')! } : {}),
    location: get('BACKUP LOCATION'),
    sizeBytes: Number(get('BACKUP SIZE BYTES')),
    dataBytes: Number(get('DATA SIZE BYTES')),
    format: get('BACKUP FORMAT') as 'tar' | 'plain',
    compression: get('COMPRESSION') as CompressionMethod,
    compressionLevel: Number(get('COMPRESSION LEVEL')),
    timezone: get('BACKUP TIMEZONE'),
    xlogMethod: get('XLOG METHOD') as 'fetch' | 'stream',
    checksumAlgorithm: get('CHECKSUM ALGORITHM') as ChecksumAlgorithm,
    artifactChecksums,
    tablespaces,
    timeline: Number(get('TIMELINE')),
    startWalFile: get('START WAL LOCATION'),
    stopWalFile: get('STOP WAL LOCATION'),
    startLsn: get('START LSN'),
    stopLsn: get('STOP LSN'),
    checkpointLsn: get('CHECKPOINT LOCATION'),
    walFiles: walFiles === 'none' ? [] : walFiles.split(','),
    walBytes: Number(get('WAL SIZE BYTES')),
    serverVersionNum: Number(get('SERVER VERSION NUM')),
    systemIdentifier: get('SYSTEM IDENTIFIER'),
    ...(optional('DATA CHECKSUM VERSION') !== undefined ? { dataChecksumVersion: Number(optional('DATA CHECKSUM VERSION')) } : {}),
    ...(optional('CHECKSUM ERRORS') !== undefined ? { pageChecksumErrors: Number(optional('CHECKSUM ERRORS')) } : {}),
    ...(errorFiles !== undefined ? { pageChecksumErrorFiles: parseErrorFiles(errorFiles) } : {}),
    walSegmentSize: Number(get('WAL SEGMENT SIZE')),
    engine: get('ENGINE'),
    threadCount: Number(get('THREAD COUNT')),
    startTime: new Date(get(DATE_KEY('START TIME'))),
    stopTime: new Date(get(DATE_KEY('STOP TIME'))),
    ...(pid ? { pid: Number(pid) } : {}),
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

/** Reads `<dir>/backupinfo`. */
export async function readBackupInfo(dir: string): Promise<BackupInfo> {
  const path = join(dir, BACKUPINFO_FILE);
  return parseBackupInfo(await readFile(path, 'utf8'), path);
}

/** Writes `<dir>/backupinfo` atomically. */
export async function writeBackupInfo(dir: string, info: BackupInfo): Promise<void> {
  await writeFileAtomic(join(dir, BACKUPINFO_FILE), renderBackupInfo(info), 0o600);
}
