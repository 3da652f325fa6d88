// Backup end: stop files, WAL from start to stop, closed archives and backupinfo, shared by full and incremental.

/**
 * The end of every native backup, full or incremental, once its data files are written: the
 * backup_label and tablespace_map that pg_backup_stop returned, the WAL from start to stop (which
 * makes the backup consistent on its own), the archives closed with their checksums, and the
 * completed backupinfo recorded in the manifest. One implementation, so that both kinds of backup
 * end in exactly the same way.
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import type { HostEntry } from '../hosts/data-host.js';
import { LocalHost } from '../hosts/local/data-host.js';
import { parseBackupLabel, type BackupLabel, type BackupStopResult } from '../postgres/backup-session.js';
import { parseLsn } from '../util/lsn.js';
import { segmentName, segmentNumberFromName } from '../wal/segment-name.js';
import { historyFileName } from '../wal/timeline-history.js';
import type { ArchiveWriter } from './archive-writer.js';
import type { BackupInfo } from '../catalog/backup-info.js';
import { waitForArchivedWal } from './transaction.js';
import type { ManifestWriter } from '../catalog/manifest.js';
import type { RepositoryStorage } from '../storage/storage.js';
import { BartError, errorMessage } from '../util/errors.js';
import { StoredObjectHost } from './stored-object-host.js';

/** Adds backup_label (and tablespace_map, when there are tablespaces) from pg_backup_stop to the base archive. */
export async function addStopFiles(base: ArchiveWriter, stop: BackupStopResult): Promise<BackupLabel> {
  const now = Date.now();
  const made = (path: string, data: string): [HostEntry, { data: Buffer }] => [
    { path, type: 'file', size: Buffer.byteLength(data), mode: 0o600, mtimeMs: now },
    { data: Buffer.from(data) },
  ];
  await base.add(...made('backup_label', stop.labelFile));
  if (stop.tablespaceMap !== '') await base.add(...made('tablespace_map', stop.tablespaceMap));
  return parseBackupLabel(stop.labelFile);
}

/** Which WAL {@link storeBackupWal} puts into the backup, and from where. */
export interface BackupWalSource {
  /** The server's WAL archive storage. */
  archive: RepositoryStorage;
  label: BackupLabel;
  /** pg_backup_stop's LSN. */
  stopLsn: string;
  segmentSize: number;
  /** How long to wait for a segment to reach the archive. */
  timeoutMs: number;
  /** Segments streamed by xlog_method = stream (file names in `dir`), used instead of the archive. */
  streamed?: { dir: string; names: string[] };
}

/** The WAL stored in a backup. */
export interface StoredWal {
  walFiles: string[];
  walBytes: number;
  stopWalFile: string;
}

/**
 * Stores the WAL from the backup's start segment to its stop segment (and the timeline's history
 * file) under pg_wal/ in the base archive, waiting for each segment to be archived; `.gz` copies
 * (wal_compression) are stored decompressed.
 */
export async function storeBackupWal(base: ArchiveWriter, src: BackupWalSource): Promise<StoredWal> {
  const { label, segmentSize } = src;
  const lastSegNo = (parseLsn(src.stopLsn) - 1n) / BigInt(segmentSize);
  const firstSegNo = segmentNumberFromName(label.startWalFile, segmentSize);
  const names: string[] = [];
  if (label.timeline > 1) {
    const history = historyFileName(label.timeline);
    if ((await src.archive.stat(history)) !== undefined) names.push(history);
  }
  const streamed = src.streamed?.names ?? [];
  if (src.streamed) names.push(...streamed.filter((n) => segmentNumberFromName(n, segmentSize) >= firstSegNo));
  else for (let seg = firstSegNo; seg <= lastSegNo; seg++) names.push(segmentName(label.timeline, seg, segmentSize));
  const host = new LocalHost();
  const archived = new StoredObjectHost(src.archive);
  const now = Date.now();
  const out: StoredWal = {
    walFiles: [],
    walBytes: 0,
    stopWalFile: segmentName(label.timeline, lastSegNo, segmentSize),
  };
  for (const name of names) {
    const entryPath = `pg_wal/${name}`;
    if (src.streamed && streamed.includes(name)) {
      const path = join(src.streamed.dir, name);
      const size = (await stat(path)).size;
      await base.add({ path: entryPath, type: 'file', size, mode: 0o600, mtimeMs: now }, { host, path });
      out.walBytes += size;
    } else {
      const key = await waitForArchivedWal(src.archive, name, src.timeoutMs);
      if (key.endsWith('.gz')) {
        const data = await gunzipArchived(src.archive, key, segmentSize);
        await base.add({ path: entryPath, type: 'file', size: data.length, mode: 0o600, mtimeMs: now }, { data });
        out.walBytes += data.length;
      } else {
        const object = await src.archive.stat(key);
        if (object === undefined)
          throw new BartError(`archived WAL file ${src.archive.location}/${key} vanished while the backup stored it`);
        const size = object.size;
        await base.add(
          { path: entryPath, type: 'file', size, mode: 0o600, mtimeMs: now },
          { host: archived, path: key },
        );
        out.walBytes += size;
      }
    }
    if (!name.endsWith('.history')) out.walFiles.push(name);
  }
  return out;
}

/**
 * A gzip-compressed archived segment (wal_compression), decompressed in memory: it is at most one
 * segment, and the tar header needs its size before its bytes. Sizes are capped so that a damaged
 * or hostile object cannot take the memory.
 */
async function gunzipArchived(archive: RepositoryStorage, key: string, segmentSize: number): Promise<Buffer> {
  const where = `${archive.location}/${key}`;
  const compressed = await archive.readAll(key, segmentSize + 1024 * 1024);
  try {
    return gunzipSync(compressed, { maxOutputLength: Math.max(segmentSize, 1024 * 1024) });
  } catch (err) {
    throw new BartError(`archived WAL file ${where} cannot be decompressed: ${errorMessage(err)}`);
  }
}

/** What {@link finishBackup} completes. */
export interface BackupEnd {
  /** Every archive writer of the backup; emptied once they are finished. */
  writers: ArchiveWriter[];
  manifest: ManifestWriter;
  /** The backupinfo written at start. */
  info: BackupInfo;
  label: BackupLabel;
  stopLsn: string;
  wal: StoredWal;
  /** Resolves when every file's manifest line is written (writers hand them over asynchronously). */
  manifestLinesWritten: () => Promise<void>;
}

/**
 * Finishes the archives (recording their checksums), completes the backupinfo and records it in the
 * manifest, which is then closed and fsynced. Returns the completed backupinfo (status active).
 */
export async function finishBackup(end: BackupEnd): Promise<BackupInfo> {
  const { info, label, wal } = end;
  let storedBytes = 0;
  let dataBytes = 0;
  for (const writer of end.writers) {
    const result = await writer.finish();
    storedBytes += result.storedBytes;
    dataBytes += result.dataBytes;
    if (result.artifact) {
      await end.manifest.addArtifact(result.artifact);
      info.artifactChecksums.push({ file: result.artifact.artifact, checksum: result.artifact.checksum });
    }
  }
  end.writers.length = 0;
  await end.manifestLinesWritten();
  const done: BackupInfo = {
    ...info,
    status: 'active',
    sizeBytes: storedBytes,
    dataBytes,
    timeline: label.timeline,
    startWalFile: label.startWalFile,
    stopWalFile: wal.stopWalFile,
    startLsn: label.startLsn,
    stopLsn: end.stopLsn,
    checkpointLsn: label.checkpointLsn,
    walFiles: wal.walFiles,
    walBytes: wal.walBytes,
    stopTime: new Date(),
  };
  delete done.pid;
  const { status: _status, ...recorded } = done;
  await end.manifest.addInfo({
    ...recorded,
    startTime: done.startTime.toISOString(),
    stopTime: done.stopTime.toISOString(),
  });
  await end.manifest.finish();
  return done;
}
