// Restore plan: a read-only scan of a backup's manifest, then the directories, links and file tasks to restore.

import { join } from 'node:path';
import { compressionExtension, type CompressionMethod } from '../storage/compression.js';
import { joinKey, type RepositoryStorage } from '../storage/storage.js';
import { BartError, errorMessage } from '../util/errors.js';
import type { BackupInfo, ChecksumAlgorithm } from '../catalog/backup-info.js';
import { MANIFEST_FILE, PLAIN_BASE_DIR, tarName } from '../catalog/layout.js';
import {
  readManifest,
  type ManifestArtifact,
  type ManifestFileEntry,
  type ManifestHeader,
} from '../catalog/manifest.js';
import { fileKey } from '../catalog/incremental-format.js';
import type { RestoreFileSpec, RestoreTask, TarRangeTask } from './reader.js';
import { objectRef } from './object-source.js';
import { TreeShapeCheck } from '../util/untrusted-path.js';

/** The data directory's archive name in manifests. */
export const BASE_ARCHIVE = 'base';

/** What one archive (`base` or a tablespace OID) of a backup holds. */
export interface ArchiveSummary {
  files: number;
  /** Bytes of file content once restored. */
  bytes: number;
  /**
   * Tar entries without offsets (written by pg_basebackup) or out of order: read the artifact
   * from its start in one task.
   */
  sequential: boolean;
}

/** The result of the first, read-only pass over a backup. */
export interface BackupScan {
  header: ManifestHeader;
  archives: Map<string, ArchiveSummary>;
  artifacts: ManifestArtifact[];
  totalFiles: number;
  totalBytes: number;
  /** Stored size of each tar artifact (by name), as checked against the manifest. */
  artifactSizes: Map<string, number>;
}

/** Files restore does not copy from the base archive: it makes the `pg_tblspc` links itself. */
const SKIPPED_BASE_FILES = new Set(['tablespace_map']);

/** The prefix (below the backup's) an archive's files are stored under in a plain backup. */
function plainArchiveDir(archive: string): string {
  return archive === BASE_ARCHIVE ? PLAIN_BASE_DIR : archive;
}

/** Where a file entry is stored in a plain backup, relative to the backup's prefix. */
function plainStoredKey(entry: ManifestFileEntry, ext: string): string {
  return joinKey(plainArchiveDir(entry.archive), entry.path + ext);
}

/** Sizes of every object below `prefix`, by key relative to it (one listing, not a stat per file). */
async function storedSizes(storage: RepositoryStorage, prefix: string): Promise<Map<string, number>> {
  const sizes = new Map<string, number>();
  for await (const page of storage.list(prefix)) {
    for (const o of page.objects) sizes.set(o.key.slice(prefix.length + 1), o.size);
  }
  return sizes;
}

/**
 * First pass, before anything is written: the manifest is complete and undamaged, it belongs to this
 * backup, and every stored artifact (tar) or file (plain) is present with the size the manifest
 * records, so a truncated or half-deleted backup is refused up front. Reads the manifest as a stream
 * from the backup's prefix `dataKey` of `storage`; messages name objects as `location/key`.
 */
export async function scanBackup(storage: RepositoryStorage, dataKey: string, info: BackupInfo): Promise<BackupScan> {
  const manifestPath = joinKey(storage.location, dataKey, MANIFEST_FILE);
  const where = (relative: string) => joinKey(storage.location, dataKey, relative);
  let header: ManifestHeader | undefined;
  const archives = new Map<string, ArchiveSummary>();
  const artifacts: ManifestArtifact[] = [];
  const lastPos = new Map<string, [number, number]>();
  const ext = compressionExtension(info.compression);
  let totalFiles = 0;
  let totalBytes = 0;
  // Checked before anything is written: no entry lies below a symlink or a file of the backup, so
  // no write of this restore can go through a link (the manifest is read back, not trusted).
  const shapes = new Map<string, TreeShapeCheck>();
  // A plain backup's stored files, listed once (their names and sizes; the manifest is checked against them).
  const plainSizes = info.format === 'tar' ? undefined : await storedSizes(storage, dataKey);
  try {
    for await (const line of readManifest(storage, joinKey(dataKey, MANIFEST_FILE), (h) => (header = h))) {
      if (line.kind === 'artifact') {
        artifacts.push(line.artifact);
        continue;
      }
      const e = line.entry;
      let summary = archives.get(e.archive);
      if (!summary) {
        summary = { files: 0, bytes: 0, sequential: false };
        archives.set(e.archive, summary);
        shapes.set(e.archive, new TreeShapeCheck(`the manifest of backup ${info.id} (archive ${e.archive})`, false));
      }
      shapes.get(e.archive)!.add(e.path, e.type);
      if (e.type !== 'file') continue;
      summary.files++;
      summary.bytes += e.size;
      totalFiles++;
      totalBytes += e.size;
      if (info.format === 'tar') {
        if (e.offset === undefined) {
          summary.sequential = true;
        } else {
          const prev = lastPos.get(e.archive);
          const pos: [number, number] = [e.offset, e.unitSkip ?? 0];
          if (prev && (pos[0] < prev[0] || (pos[0] === prev[0] && pos[1] <= prev[1]))) summary.sequential = true;
          lastPos.set(e.archive, pos);
        }
      } else {
        const key = plainStoredKey(e, ext);
        let stored = plainSizes!.get(key);
        let storedKey = key;
        if (stored === undefined && ext !== '') {
          storedKey = plainStoredKey(e, '');
          stored = plainSizes!.get(storedKey);
        }
        if (stored === undefined) throw new BartError(`backup ${info.id} is damaged: "${where(key)}" is missing`);
        if (e.storedSize !== undefined && stored !== e.storedSize) {
          throw new BartError(
            `backup ${info.id} is damaged: "${where(storedKey)}" is ${stored} bytes, the manifest says ${e.storedSize}`,
          );
        }
      }
    }
  } catch (err) {
    if (err instanceof BartError) throw err;
    throw new BartError(`backup ${info.id} cannot be restored: ${errorMessage(err)}`);
  }
  for (const shape of shapes.values()) shape.finish();
  if (!header) throw new BartError(`backup ${info.id} cannot be restored: ${manifestPath} has no header`);
  if (header.id !== info.id || header.format !== info.format) {
    throw new BartError(
      `backup ${info.id} cannot be restored: ${manifestPath} describes backup ${header.id} (${header.format}), not this one`,
    );
  }
  const artifactSizes = new Map<string, number>();
  if (info.format === 'tar') {
    for (const archive of archives.keys()) {
      const name = tarName(archive, ext);
      const size = (await storage.stat(joinKey(dataKey, name)))?.size;
      if (size === undefined) throw new BartError(`backup ${info.id} is damaged: "${where(name)}" is missing`);
      const recorded = artifacts.find((a) => a.artifact === name);
      if (recorded && recorded.size !== size) {
        throw new BartError(
          `backup ${info.id} is damaged: "${where(name)}" is ${size} bytes, the manifest says ${recorded.size}`,
        );
      }
      artifactSizes.set(name, size);
    }
  }
  for (const archive of archives.keys()) {
    if (archive !== BASE_ARCHIVE && !info.tablespaces.some((t) => String(t.oid) === archive)) {
      throw new BartError(
        `backup ${info.id} cannot be restored: its manifest has archive "${archive}", which backupinfo does not list as a tablespace`,
      );
    }
  }
  if (!archives.has(BASE_ARCHIVE))
    throw new BartError(`backup ${info.id} cannot be restored: its manifest lists no data directory files`);
  return { header, archives, artifacts, totalFiles, totalBytes, artifactSizes };
}

/** Settings of the second pass. */
export interface PlanOptions {
  /** The repository storage of the backup's server. */
  storage: RepositoryStorage;
  /** The prefix of the backup's files ({@link CatalogEntry.dataKey}). */
  dataKey: string;
  info: BackupInfo;
  scan: BackupScan;
  /** Restore root of each archive: `base` → the data directory, OID → the tablespace location. */
  destinations: Map<string, string>;
  /** NONE when checksums are not verified. */
  checksumAlgorithm: ChecksumAlgorithm;
  /** Bytes of content per task; smaller tasks balance better, larger ones restart decoding less often. */
  taskBytes: number;
  /** Paths of the base archive written under another name until the end. */
  holdBack: Record<string, string>;
  /**
   * RESTORE --delta: files ({@link fileKey}) the target already holds with the right content. They
   * get no task: a tar task ends before one (the next file starts a task at its own unit offset),
   * except in an archive that can only be read from its start, where they are read past.
   */
  keep?: ReadonlySet<string>;
}

/** One step of a restore: make a directory or link (done in order by the caller), or a task for a worker. */
export type PlanItem =
  | { kind: 'dir'; path: string; mode: number }
  | { kind: 'symlink'; path: string; linkTarget: string }
  | { kind: 'task'; task: RestoreTask };

/** Most files in one plain task, so no task message grows without bound. */
const MAX_FILES_PER_TASK = 2000;

interface Pending {
  files: RestoreFileSpec[];
  bytes: number;
  offset: number;
  unitSkip: number;
}

/**
 * Second pass: streams the manifest again and yields directories and links (in manifest order, so
 * parents come first) and tasks of about `taskBytes` each. Tar tasks are runs of consecutive files
 * starting at an entry's unit offset, which is what lets N workers decode one archive in parallel.
 */
export async function* planRestore(opts: PlanOptions): AsyncGenerator<PlanItem> {
  const { info, scan, storage, dataKey } = opts;
  const compression: CompressionMethod = info.compression;
  const ext = compressionExtension(compression);
  const pending = new Map<string, Pending>();
  const holdBackFor = (archive: string) => (archive === BASE_ARCHIVE ? opts.holdBack : {});

  const makeTask = (archive: string, p: Pending): RestoreTask => {
    const anyOrder = scan.archives.get(archive)!.sequential;
    const destRoot = opts.destinations.get(archive)!;
    const stored = joinKey(dataKey, info.format === 'tar' ? tarName(archive, ext) : plainArchiveDir(archive));
    const ref = objectRef(storage, stored);
    // Messages name what was read as the storage names it (for POSIX, the path).
    const label = ref.name;
    const common = {
      destRoot,
      files: p.files,
      checksumAlgorithm: opts.checksumAlgorithm,
      holdBack: holdBackFor(archive),
      label,
    };
    if (info.format === 'tar') {
      return {
        kind: 'tar-range',
        ...common,
        artifact: ref,
        compression,
        offset: p.offset,
        unitSkip: p.unitSkip,
        anyOrder,
      };
    }
    return { kind: 'plain-files', ...common, source: ref, compression, extension: ext };
  };

  // Where each tar task's stored bytes end, so that its ranged read asks for no more than it needs.
  // A task ends before file X: when X's header starts its unit (unitSkip 0), the task's bytes end at
  // X's offset; otherwise the task's last file ends inside X's unit, which ends at the next larger
  // offset the manifest shows: such a task waits for it (or for the manifest's end: the artifact's end).
  const waiting = new Map<string, { task: TarRangeTask; boundary: number }[]>();
  const artifactEnd = (archive: string) => scan.artifactSizes.get(tarName(archive, ext));
  const ended = (task: RestoreTask, end: number | undefined): PlanItem => ({
    kind: 'task',
    task: task.kind === 'tar-range' && end !== undefined ? { ...task, end } : task,
  });
  /** The task of `p`, ended before `next` (undefined: at the end of the archive); undefined while it waits. */
  const finish = (archive: string, p: Pending, next: ManifestFileEntry | undefined): PlanItem | undefined => {
    const task = makeTask(archive, p);
    if (task.kind !== 'tar-range' || next?.offset === undefined || scan.archives.get(archive)!.sequential)
      return ended(task, artifactEnd(archive));
    if ((next.unitSkip ?? 0) === 0) return ended(task, next.offset);
    const list = waiting.get(archive) ?? [];
    list.push({ task, boundary: next.offset });
    waiting.set(archive, list);
    return undefined;
  };

  for await (const line of readManifest(storage, joinKey(dataKey, MANIFEST_FILE))) {
    if (line.kind !== 'file') continue;
    const e = line.entry;
    const destRoot = opts.destinations.get(e.archive);
    if (destRoot === undefined) continue;
    const held = e.type === 'file' && e.offset !== undefined ? waiting.get(e.archive) : undefined;
    if (held) {
      while (held.length > 0 && held[0]!.boundary < e.offset!) yield ended(held.shift()!.task, e.offset);
    }
    if (e.type === 'dir') {
      yield { kind: 'dir', path: join(destRoot, e.path), mode: e.mode & 0o777 };
      continue;
    }
    if (e.type === 'symlink') {
      // pg_tblspc links are made from backupinfo's tablespaces (and any mapping), not copied.
      if (e.archive === BASE_ARCHIVE && e.path.startsWith('pg_tblspc/')) continue;
      yield { kind: 'symlink', path: join(destRoot, e.path), linkTarget: e.linkTarget ?? '' };
      continue;
    }
    const spec: RestoreFileSpec = { path: e.path, size: e.size, mode: e.mode };
    if (e.checksum && opts.checksumAlgorithm !== 'NONE') spec.checksum = e.checksum;
    const summary = scan.archives.get(e.archive)!;
    if (opts.keep?.has(fileKey(e.archive, e.path))) {
      const run = pending.get(e.archive);
      if (info.format !== 'tar') continue;
      if (!summary.sequential) {
        // The run of files to write ends here; the next one starts its own task at its offset.
        if (run && run.files.length > 0) {
          const item = finish(e.archive, run, e);
          if (item) yield item;
        }
        pending.delete(e.archive);
        continue;
      }
      spec.skip = true;
    }
    const skip = e.archive === BASE_ARCHIVE && SKIPPED_BASE_FILES.has(e.path);
    if (skip) {
      // A plain backup's file can simply be left out; a tar's must still be read past.
      if (info.format !== 'tar') continue;
      spec.skip = true;
    }
    let p = pending.get(e.archive);
    const split = info.format === 'tar' ? !summary.sequential && e.offset !== undefined : true;
    if (p && split && (p.bytes >= opts.taskBytes || p.files.length >= MAX_FILES_PER_TASK)) {
      const item = finish(e.archive, p, e);
      if (item) yield item;
      p = undefined;
    }
    if (!p) {
      const sequential = info.format === 'tar' && (summary.sequential || e.offset === undefined);
      p = {
        files: [],
        bytes: 0,
        offset: sequential ? 0 : (e.offset ?? 0),
        unitSkip: sequential ? 0 : (e.unitSkip ?? 0),
      };
      pending.set(e.archive, p);
    }
    p.files.push(spec);
    p.bytes += e.size + 512;
  }
  for (const [archive, list] of waiting) for (const w of list) yield ended(w.task, artifactEnd(archive));
  for (const [archive, p] of pending) if (p.files.length > 0) yield finish(archive, p, undefined)!;
}
