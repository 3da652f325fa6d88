// Command: MANAGE -l, the obsolete backups, WAL and leftovers of a server listed as text or JSON.

import type { BartConfig, ServerConfig } from '../config/types.js';
import { formatRetentionPolicy } from '../config/retention-policy.js';
import { listBackups } from '../catalog/catalog.js';
import { entryWithDescendants, obsoleteTargets, planWalRemoval } from '../retention/obsolete.js';
import { findLeftovers, type LeftoverKind } from '../retention/leftovers.js';
import { closeServerStorages, openServerStorages, type ServerStorages } from '../retention/server-storages.js';
import { formatBytes, formatTimestamp } from '../util/format.js';
import { log } from '../util/log.js';

/** One backup MANAGE -d would delete (docs/json-output.md, MANAGE -l). */
export interface ObsoleteBackupJson {
  id: string;
  name: string | null;
  parent: string | null;
  status: string;
  startTime: string;
  stopTime: string;
  sizeBytes: number;
  /** Incrementals that depend on it (deleted with it), oldest first. */
  incrementals: string[];
}

/** MANAGE -l for one server, as printed with --output json. */
export interface ManageListing {
  server: string;
  retentionPolicy: string;
  obsoleteBackups: ObsoleteBackupJson[];
  wal: {
    files: number;
    bytes: number;
    first: string | null;
    last: string | null;
    names: string[];
    reason: string;
    skipped: boolean;
  };
  leftovers: { kind: LeftoverKind; path: string; description: string; bytes: number }[];
}

/** Builds the MANAGE -l listing of a server (reads only; takes no lock). */
export async function manageListing(config: BartConfig, server: ServerConfig): Promise<ManageListing> {
  const storages = openServerStorages(config, server);
  try {
    return await listing(config, server, storages);
  } finally {
    await closeServerStorages(storages);
  }
}

async function listing(config: BartConfig, server: ServerConfig, storages: ServerStorages): Promise<ManageListing> {
  const entries = await listBackups(config, server, storages.repo);
  const complete = entries.filter((e) => e.complete);
  const targets = obsoleteTargets(entries);
  const targetIds = new Set(targets.map((t) => t.info.id));
  // Listed as BART did: each obsolete backup whose parent is not itself listed, with its incrementals.
  const heads = targets.filter((t) => t.info.parent === undefined || !targetIds.has(t.info.parent)).reverse();
  const wal = await planWalRemoval(config, server, storages, entries, targetIds);
  const leftovers = await findLeftovers(config, server, false, storages);
  return {
    server: server.name,
    retentionPolicy: formatRetentionPolicy(server.retentionPolicy),
    obsoleteBackups: heads.map((h) => ({
      id: h.info.id,
      name: h.info.name ?? null,
      parent: h.info.parent ?? null,
      status: h.info.status,
      startTime: h.info.startTime.toISOString(),
      stopTime: h.info.stopTime.toISOString(),
      sizeBytes: h.info.sizeBytes,
      incrementals: entryWithDescendants(complete, h.info.id)
        .filter((d) => d.info.id !== h.info.id)
        .map((d) => d.info.id)
        .reverse(),
    })),
    wal: {
      files: wal.plan.remove.length,
      bytes: wal.bytes,
      first: wal.plan.remove[0] ?? null,
      last: wal.plan.remove[wal.plan.remove.length - 1] ?? null,
      names: wal.plan.remove,
      reason: wal.plan.reason,
      skipped: wal.skipped,
    },
    leftovers: leftovers.map((l) => ({ kind: l.kind, path: l.path, description: l.description, bytes: l.bytes })),
  };
}

/** Prints a listing as text (INFO lines, as BART's MANAGE -l did). */
export function printListing(l: ManageListing): void {
  log.info(
    `server ${l.server} (retention policy ${l.retentionPolicy}): ${l.obsoleteBackups.length} obsolete backup(s)`,
  );
  for (const b of l.obsoleteBackups) {
    log.info(
      `  backup ${b.id}${b.name ? ` (${b.name})` : ''}: ${b.status}, ${formatTimestamp(new Date(b.startTime))}, ${formatBytes(b.sizeBytes)}`,
    );
    if (b.incrementals.length > 0) log.info(`    incremental backup(s) deleted with it: ${b.incrementals.join(', ')}`);
  }
  if (l.wal.skipped) log.info(`  WAL files: ${l.wal.reason}`);
  else
    log.info(
      `  WAL files MANAGE -d would delete: ${l.wal.files}${l.wal.first ? ` (${l.wal.first} .. ${l.wal.last})` : ''}, ${formatBytes(l.wal.bytes)}; ${l.wal.reason}`,
    );
  log.info(`  unused files (leftovers of interrupted commands): ${l.leftovers.length}`);
  for (const f of l.leftovers) log.info(`    ${f.path}: ${f.description}, ${formatBytes(f.bytes)}`);
}
