// Restore phase: RESTORE --delta, which files of an existing data directory to keep, rewrite or remove.

import { joinKey } from '../storage/storage.js';
import { join } from 'node:path';
import type { BackupInfo, ChecksumAlgorithm } from '../catalog/backup-info.js';
import type { CatalogEntry } from '../catalog/catalog.js';
import { fileKey, type IncrementalManifestEntry } from '../catalog/incremental-format.js';
import { MANIFEST_FILE } from '../catalog/layout.js';
import { hashName, readManifest } from '../catalog/manifest.js';
import type { RestoreTarget } from '../hosts/restore-target.js';
import { BartError, errorMessage } from '../util/errors.js';
import { log } from '../util/log.js';
import { BASE_ARCHIVE } from './plan.js';
import { INCOMPLETE_MARKER, PG_VERSION_PENDING } from './rollback.js';
import type { RestoreRoot } from './tablespaces.js';

/** Where pg_control is, and how much of it holds the system identifier (pg_control.h: the first field, a uint64). */
const PG_CONTROL = 'global/pg_control';
const SYSTEM_ID_BYTES = 8;

/** Files the restore never takes from the base archive (it makes the pg_tblspc links itself). */
const SKIPPED_BASE_FILES = new Set(['tablespace_map']);

/** The line of the in-progress marker that names the cluster, so a rerun after a crash can trust it. */
export function markerSystemIdLine(info: BackupInfo): string {
  return `system identifier ${info.systemIdentifier}\n`;
}

/** What the target holds now, and what it was compared to: the plan of a delta restore. */
export interface DeltaPlan {
  /** Files ({@link fileKey}) that already hold the restored content: neither written nor removed. */
  keep: Set<string>;
  /** The kept files and every directory above them: a chain's intermediate clean-ups pass them over. */
  protect: Set<string>;
  keptFiles: number;
  keptBytes: number;
  /** Bytes each root must still find room for (per root path). */
  growth: Map<string, number>;
  /** Why files could not be compared (shown once). */
  notes: string[];
  /** Kept files whose permission bits differ from the backup's: path on the target → mode. */
  modes: Map<string, number>;
  /** Every path of the final state ({@link fileKey}) with its type. */
  finalTypes: Map<string, 'file' | 'dir' | 'symlink'>;
}

/** A file of the restored state and the whole-file checksum it ends with, when one link recorded it. */
interface FinalFile {
  archive: string;
  path: string;
  size: number;
  mode: number;
  /** Hex digest of the whole restored file, with `algorithm`; undefined when no manifest records it. */
  checksum?: string;
  algorithm: ChecksumAlgorithm;
}

/** Reads a manifest's file entries (dirs and links too), verifying its hash. */
async function* manifestEntries(link: CatalogEntry): AsyncGenerator<IncrementalManifestEntry> {
  try {
    for await (const line of readManifest(link.storage, joinKey(link.dataKey, MANIFEST_FILE))) {
      if (line.kind === 'file') yield line.entry as IncrementalManifestEntry;
    }
  } catch (err) {
    if (err instanceof BartError) throw err;
    throw new BartError(`backup ${link.info.id} cannot be restored: ${errorMessage(err)}`);
  }
}

/**
 * The state the chain restores, file by file, with the checksum of each file's final content where
 * the manifests give it. A file stored whole has its checksum; a later link that stores it as changed
 * blocks records only the checksum of those blocks, so its final content is known only when every
 * later link changed no block and kept its length. A path whose type differs between any two links, or
 * below one that does, gets no checksum either (the chain removes and recreates it on the way).
 */
export async function finalState(chain: CatalogEntry[]): Promise<{
  files: Map<string, FinalFile>;
  types: Map<string, 'file' | 'dir' | 'symlink'>;
}> {
  let files = new Map<string, FinalFile>();
  let types = new Map<string, 'file' | 'dir' | 'symlink'>();
  const unstable = new Set<string>();
  // The type each path had in any link so far (a path may skip links: a directory, gone, then a file).
  const everType = new Map<string, 'file' | 'dir' | 'symlink'>();
  for (const link of chain) {
    const nextFiles = new Map<string, FinalFile>();
    const nextTypes = new Map<string, 'file' | 'dir' | 'symlink'>();
    const algorithm = link.info.checksumAlgorithm;
    for await (const e of manifestEntries(link)) {
      const key = fileKey(e.archive, e.path);
      const was = everType.get(key);
      if (was !== undefined && was !== e.type) unstable.add(key);
      everType.set(key, e.type);
      nextTypes.set(key, e.type);
      if (e.type !== 'file') continue;
      const prev = files.get(key);
      let f: FinalFile;
      if (!e.incr) {
        f = { archive: e.archive, path: e.path, size: e.size, mode: e.mode, algorithm };
        if (e.checksum !== undefined && algorithm !== 'NONE') f.checksum = e.checksum;
      } else {
        f = { archive: e.archive, path: e.path, size: e.incr.length, mode: e.mode, algorithm };
        // No changed block and the same length: the content is the previous link's.
        if (prev?.checksum !== undefined && e.size === 0 && e.incr.length === prev.size) {
          f.checksum = prev.checksum;
          f.algorithm = prev.algorithm;
        }
      }
      nextFiles.set(key, f);
    }
    files = nextFiles;
    types = nextTypes;
  }
  for (const f of files.values()) {
    if (f.checksum === undefined) continue;
    const parts = f.path.split('/');
    for (let i = parts.length; i > 0; i--) {
      if (unstable.has(fileKey(f.archive, parts.slice(0, i).join('/')))) {
        delete f.checksum;
        break;
      }
    }
  }
  return { files, types };
}

/** True for paths a delta restore never keeps: WAL (nothing in pg_wal survives) and what the restore makes itself. */
function neverKept(archive: string, path: string): boolean {
  if (archive !== BASE_ARCHIVE) return false;
  return path.startsWith('pg_wal/') || path === 'PG_VERSION' || SKIPPED_BASE_FILES.has(path);
}

/**
 * Refuses a data directory a delta restore must not touch: not a PostgreSQL data directory, another
 * cluster's (system identifier of global/pg_control against the backup's), or one a server runs on
 * (postmaster.pid naming a live process on the target host). An absent or empty directory is fine:
 * there is nothing to compare, everything is written.
 */
export async function checkDeltaTarget(target: RestoreTarget, root: RestoreRoot, info: BackupInfo): Promise<void> {
  const s = root.state;
  const path = root.path;
  if (s.kind === 'not-directory') throw new BartError(`${root.what} "${path}" exists and is not a directory`);
  if (s.kind !== 'not-empty') {
    log.info(`--delta: "${path}" is ${s.kind}: nothing to compare, every file is written`);
    return;
  }
  const marker = await target.readFile(join(path, INCOMPLETE_MARKER));
  const control = await target.readHead(join(path, PG_CONTROL), SYSTEM_ID_BYTES);
  let found: string | undefined;
  if (control !== undefined && control.length === SYSTEM_ID_BYTES) {
    // pg_control is written in the server's byte order; pgbart supports little-endian hosts only.
    found = control.readBigUInt64LE(0).toString();
  }
  // An interrupted delta (or plain) restore may have been killed while rewriting pg_control (left
  // shorter than its identifier): its marker names the cluster it was restoring. A whole identifier wins.
  const fromMarker = marker !== undefined ? /^system identifier (\d+)$/m.exec(marker)?.[1] : undefined;
  if (found === undefined && fromMarker !== undefined) found = fromMarker;
  if (found === undefined) {
    throw new BartError(
      `--delta: "${path}" is not a PostgreSQL data directory (no readable ${PG_CONTROL}); ` +
        'RESTORE --delta rewrites only a data directory of the cluster the backup was taken from',
    );
  }
  if (found !== info.systemIdentifier) {
    throw new BartError(
      `--delta: "${path}" belongs to another cluster (system identifier ${found}; ` +
        `backup ${info.id} has ${info.systemIdentifier}); restore into an empty directory instead`,
    );
  }
  const pidFile = await target.readFile(join(path, 'postmaster.pid'));
  const pid = pidFile !== undefined ? Number(pidFile.split('\n')[0]!.trim()) : NaN;
  if (Number.isSafeInteger(pid) && pid > 0 && (await target.processAlive(pid))) {
    throw new BartError(
      `--delta: a server is running on "${path}" (postmaster.pid names process ${pid}, which is alive); ` +
        `stop it first (pg_ctl -D ${path} stop)`,
    );
  }
}

/**
 * Refuses a tablespace location that holds something other than tablespace directories
 * (`PG_<version>_<catalog version>`): a delta restore removes what the backup does not have, so a
 * mistyped location must not be emptied.
 */
export async function checkDeltaTablespace(target: RestoreTarget, root: RestoreRoot): Promise<void> {
  const s = root.state;
  if (s.kind === 'not-directory') throw new BartError(`${root.what} "${root.path}" exists and is not a directory`);
  if (s.kind !== 'not-empty') return;
  for await (const e of target.walk(root.path)) {
    if (e.path.includes('/')) continue;
    if (!/^PG_\d+_\d+$/.test(e.path) || e.type !== 'dir') {
      throw new BartError(
        `--delta: ${root.what} "${root.path}" holds "${e.path}", which is not a tablespace directory ` +
          '(PG_<version>_<catalog version>); it is not rewritten: map the tablespace elsewhere with --tablespace-map',
      );
    }
  }
}

/**
 * Compares the target with the chain's final state: files of the expected size and checksum are kept,
 * the others will be written. Reads only.
 */
export async function planDelta(
  target: RestoreTarget,
  chain: CatalogEntry[],
  roots: RestoreRoot[],
  destinations: Map<string, string>,
): Promise<DeltaPlan> {
  const { files, types } = await finalState(chain);
  const plan: DeltaPlan = {
    keep: new Set(),
    protect: new Set(),
    keptFiles: 0,
    keptBytes: 0,
    growth: new Map(),
    notes: [],
    modes: new Map(),
    finalTypes: types,
  };
  const present = new Set(roots.filter((r) => r.state.kind === 'not-empty').map((r) => r.path));
  // Per root, per algorithm: what to ask the target about.
  const asks = new Map<string, { root: string; algorithm: ChecksumAlgorithm; files: FinalFile[] }>();
  let unknown = 0;
  for (const f of files.values()) {
    const root = destinations.get(f.archive);
    if (root === undefined) continue;
    plan.growth.set(root, (plan.growth.get(root) ?? 0) + f.size);
    if (!present.has(root) || neverKept(f.archive, f.path)) continue;
    if (f.checksum === undefined) {
      unknown++;
      // Still asked, without a digest: its current size tells how much room rewriting it needs.
    }
    const algorithm = f.checksum === undefined ? 'NONE' : f.algorithm;
    const k = `${root}\0${algorithm}`;
    let a = asks.get(k);
    if (!a) asks.set(k, (a = { root, algorithm, files: [] }));
    a.files.push(f);
  }
  for (const a of asks.values()) {
    const hash = hashName(a.algorithm) ?? 'none';
    const found = await target.compareFiles(
      a.root,
      a.files.map((f) => ({ path: f.path, size: f.size })),
      hash,
    );
    for (const f of a.files) {
      const st = found.get(f.path);
      if (!st) continue;
      if (hash !== 'none' && st.size === f.size && st.digest === f.checksum) {
        const key = fileKey(f.archive, f.path);
        plan.keep.add(key);
        plan.keptFiles++;
        plan.keptBytes += f.size;
        plan.growth.set(a.root, plan.growth.get(a.root)! - f.size);
        if (st.mode !== (f.mode & 0o7777)) plan.modes.set(join(a.root, f.path), f.mode & 0o7777);
        const parts = f.path.split('/');
        for (let i = parts.length; i > 0; i--) plan.protect.add(fileKey(f.archive, parts.slice(0, i).join('/')));
      } else {
        // Rewritten in place: only what it grows by needs room.
        plan.growth.set(a.root, plan.growth.get(a.root)! - Math.min(st.size, f.size));
      }
    }
  }
  if (chain.some((l) => l.info.checksumAlgorithm === 'NONE')) {
    plan.notes.push('the backup records no file checksums (checksum algorithm NONE): every file is rewritten');
  }
  if (unknown > 0 && chain.length > 1) {
    plan.notes.push(
      `${unknown} files changed blocks within the incremental chain; their final checksum is in no manifest, ` +
        'so they are rewritten through the chain',
    );
  }
  return plan;
}

/**
 * Removes from the target what the restored state does not have: files and directories the backup
 * does not list (or lists with another type), every symlink (the restore recreates the backup's),
 * everything in pg_wal and in pg_tblspc (the links are made anew). Directories stay when the backup
 * has them; files that will be rewritten stay too (they are truncated when written).
 */
export async function removeStale(
  target: RestoreTarget,
  destinations: Map<string, string>,
  plan: DeltaPlan,
): Promise<number> {
  let removed = 0;
  for (const [archive, root] of destinations) {
    let removedDir: string | undefined;
    for await (const e of target.walk(root)) {
      if (removedDir !== undefined && e.path.startsWith(removedDir)) continue;
      let path = e.path;
      if (archive === BASE_ARCHIVE) {
        if (path === INCOMPLETE_MARKER) continue;
        if (path === PG_VERSION_PENDING) path = 'PG_VERSION';
      }
      const inBase = archive === BASE_ARCHIVE;
      const wanted = plan.finalTypes.get(fileKey(archive, path));
      const stale =
        wanted !== e.type ||
        e.type === 'symlink' ||
        (inBase && e.type !== 'dir' && (path.startsWith('pg_wal/') || path.startsWith('pg_tblspc/')));
      if (!stale) continue;
      await target.remove(join(root, e.path));
      if (e.type === 'dir') removedDir = `${e.path}/`;
      removed++;
    }
  }
  return removed;
}
