// Backup chain: whether an incremental's ancestors are whole, the chain resolved, and its restored state.

import type { ServerConfig } from '../config/types.js';
import { BartError, errorMessage } from '../util/errors.js';
import type { CatalogEntry } from './catalog.js';
import { fileKey, type IncrementalManifestEntry } from './incremental-format.js';
import { MANIFEST_FILE } from './layout.js';
import { readManifest } from './manifest.js';
import { joinKey, type RepositoryStorage } from '../storage/storage.js';

/**
 * Why a backup's chain (the backup, its parent, the parent's parent, ... down to a full backup)
 * cannot be used, or undefined when it is whole: every ancestor exists, is complete, is not a
 * failed or in-progress backup, and belongs to the same cluster (system identifier).
 */
export function chainProblem(entries: CatalogEntry[], entry: CatalogEntry): string | undefined {
  const seen = new Set<string>();
  let current = entry;
  while (current.info.parent !== undefined) {
    if (seen.has(current.info.id)) return `backup ${entry.info.id}: its chain loops at backup ${current.info.id}`;
    seen.add(current.info.id);
    const parentId = current.info.parent;
    const parent = entries.find((e) => e.info.id === parentId);
    if (!parent)
      return `backup ${current.info.id} needs its parent ${parentId}, which is no longer in the catalog (broken chain)`;
    if (!parent.complete)
      return `backup ${current.info.id} needs its parent ${parentId}, which is ${parent.info.status} (broken chain)`;
    if (parent.info.systemIdentifier !== current.info.systemIdentifier) {
      return `backup ${current.info.id} and its parent ${parentId} belong to different clusters (system identifiers ${current.info.systemIdentifier} and ${parent.info.systemIdentifier})`;
    }
    current = parent;
  }
  return undefined;
}

/**
 * The chain of a backup, full backup first and `entry` last; a BartError naming the missing link
 * when it is broken (a broken chain is reported, never restored).
 */
export function resolveChain(entries: CatalogEntry[], entry: CatalogEntry, server: ServerConfig): CatalogEntry[] {
  const problem = chainProblem(entries, entry);
  if (problem) throw new BartError(`server ${server.name}: ${problem}; it cannot be restored`);
  const chain = [entry];
  while (chain[0]!.info.parent !== undefined) chain.unshift(entries.find((e) => e.info.id === chain[0]!.info.parent)!);
  return chain;
}

/** A file as a backup restores it: its length and permission bits. */
export interface RestoredFile {
  length: number;
  mode: number;
}

/** What the manifest of one backup says the restored data directory and tablespaces hold. */
export interface RestoredState {
  /** Files by {@link fileKey}. */
  files: Map<string, RestoredFile>;
  /** Directories and symlinks by {@link fileKey}, with their type. */
  others: Map<string, 'dir' | 'symlink'>;
  /** Restored bytes and file count per archive. */
  archives: Map<string, { bytes: number; files: number }>;
}

/**
 * Reads a backup's manifest (verifying its hash) into the list of every file it restores with the
 * restored length: whole entries' size, block-level entries' recorded length. Since an incremental
 * lists every file of the cluster, one manifest describes the whole restored state.
 */
export async function readRestoredState(storage: RepositoryStorage, dirKey: string): Promise<RestoredState> {
  const state: RestoredState = { files: new Map(), others: new Map(), archives: new Map() };
  try {
    for await (const line of readManifest(storage, joinKey(dirKey, MANIFEST_FILE))) {
      if (line.kind !== 'file') continue;
      const e = line.entry as IncrementalManifestEntry;
      const key = fileKey(e.archive, e.path);
      if (e.type !== 'file') {
        state.others.set(key, e.type);
        continue;
      }
      const length = e.incr ? e.incr.length : e.size;
      state.files.set(key, { length, mode: e.mode });
      const sum = state.archives.get(e.archive) ?? { bytes: 0, files: 0 };
      sum.bytes += length;
      sum.files++;
      state.archives.set(e.archive, sum);
    }
  } catch (err) {
    throw new BartError(
      `manifest of backup in ${joinKey(storage.location, dirKey)} cannot be read: ${errorMessage(err)}`,
    );
  }
  return state;
}
