// Command: SHOW-BACKUPS, the backups of each server as BART's table, detail blocks or JSON.

import { joinKey } from '../storage/storage.js';
import type { ServerConfig } from '../config/types.js';
import { listBackups, type CatalogEntry } from '../catalog/catalog.js';
import { walUsageByBackup, type BackupWalUsage } from '../catalog/wal-usage.js';
import { chainProblem } from '../catalog/chain.js';
import { readVerifications, type BackupVerifications, type VerifyRecord } from '../catalog/verify-record.js';
import { log } from '../util/log.js';
import { BartError } from '../util/errors.js';
import { formatBytes, formatTable, formatTimestamp } from '../util/format.js';
import { closeServerStorages, openServerStorages } from '../retention/server-storages.js';
import { selectServers, type CommandContext } from './context.js';

/** SHOW-BACKUPS options. */
export interface ShowBackupsOptions {
  server?: string;
  backupid?: string;
  showAll?: boolean;
  output?: string;
}

interface Row {
  server: ServerConfig;
  entry: CatalogEntry;
  wal: BackupWalUsage;
  /** The last VERIFY-CHKSUM and VERIFY-RESTORE results. */
  verified: BackupVerifications;
}

/** `-t`'s LAST VERIFY-* value: `OK at <time> (<details>)`, `FAILED at <time>: <reason>`, or `never`. */
function verifyText(r: VerifyRecord | undefined): string {
  if (!r) return 'never';
  const at = `${r.result} at ${formatTimestamp(new Date(r.time))}`;
  if (r.result === 'OK') return `${at}${r.details ? ` (${r.details})` : ''}`;
  return `${at}: ${r.reason ?? 'no reason recorded'}`;
}

/** The JSON form of a recorded result (docs/json-output.md). */
function verifyJson(r: VerifyRecord | undefined): Record<string, unknown> | null {
  return r ? { time: r.time, result: r.result, reason: r.reason ?? null, details: r.details ?? null } : null;
}

/**
 * Whether BACKUP verified the pages' data checksums: `verified`, `no data checksums` (the cluster
 * has none), `not verified` (--no-verify-checksums, pg_basebackup, or a backup of an older pgbart).
 */
function pageVerification(entry: CatalogEntry): 'verified' | 'no data checksums' | 'not verified' {
  if (entry.info.pageChecksumErrors !== undefined) return 'verified';
  return entry.info.dataChecksumVersion === 0 ? 'no data checksums' : 'not verified';
}

/** Files listed in `-t`'s CHECKSUM ERRORS line (all are in --output json and backupinfo). */
const LISTED_FILES = 5;

/** `-t`'s CHECKSUM ERRORS value: the count and the first files with their blocks, or why none. */
function checksumErrorsText(entry: CatalogEntry): string {
  const state = pageVerification(entry);
  if (state !== 'verified') return state;
  const errors = entry.info.pageChecksumErrors!;
  const files = entry.info.pageChecksumErrorFiles ?? [];
  if (errors === 0 || files.length === 0) return String(errors);
  const listed = files.slice(0, LISTED_FILES).map((f) => {
    const more = f.count > f.blocks.length ? ` and ${f.count - f.blocks.length} more` : '';
    return `${f.file}: block${f.count === 1 ? '' : 's'} ${f.blocks.join(', ')}${more}`;
  });
  if (files.length > LISTED_FILES) listed.push(`${files.length - LISTED_FILES} more files`);
  return `${errors} (${listed.join('; ')})`;
}

function matches(entry: CatalogEntry, id: string | undefined): boolean {
  if (!id || id.toLowerCase() === 'all') return true;
  return entry.info.id === id || entry.info.name === id;
}

/** `bart SHOW-BACKUPS`: BART's table, `-t` detail blocks, or JSON (docs/json-output.md). */
export async function showBackups(ctx: CommandContext, options: unknown): Promise<number> {
  const o = options as ShowBackupsOptions;
  const rows: Row[] = [];
  for (const server of selectServers(ctx.config, o.server)) {
    // Open until every row is read (verify records are read through each entry's storage).
    const storages = openServerStorages(ctx.config, server);
    try {
      const entries = await listBackups(ctx.config, server, storages.repo);
      const usage = await walUsageByBackup(storages.archive, entries);
      for (const entry of entries) {
        if (!matches(entry, o.backupid)) continue;
        const verified = entry.complete ? await readVerifications(entry.storage, entry.key) : {};
        rows.push({ server, entry, wal: usage.get(entry.info.id) ?? { files: 0, bytes: 0 }, verified });
        // An incremental whose chain lost a link cannot be restored: say so next to the listing.
        const broken = entry.complete && entry.info.parent !== undefined ? chainProblem(entries, entry) : undefined;
        if (broken) log.warning(`server ${server.name}: ${broken}; it cannot be restored`);
        if (entry.damage !== undefined) {
          const what = `backup ${entry.info.id} is damaged (${entry.damage})`;
          const repair = `bart INIT -r -s ${server.name} -i ${entry.info.id} rebuilds its backupinfo; DELETE deletes it`;
          log.warning(`server ${server.name}: ${what}; it cannot be restored (${repair})`);
        }
      }
    } finally {
      await closeServerStorages(storages);
    }
  }
  if (o.backupid && o.backupid.toLowerCase() !== 'all' && rows.length === 0) {
    throw new BartError(`backup "${o.backupid}" not found${o.server ? ` for server ${o.server}` : ''}`);
  }
  rows.sort(
    (a, b) =>
      a.server.name.localeCompare(b.server.name) || (BigInt(b.entry.info.id) > BigInt(a.entry.info.id) ? 1 : -1),
  );

  if (o.output === 'json') {
    // A damaged backup's backupinfo is not trusted: what it would say is null (docs/json-output.md).
    const json = rows.map(({ server, entry, wal, verified }) => ({
      server: server.name,
      id: entry.info.id,
      name: entry.info.name ?? null,
      parent: entry.info.parent ?? null,
      status: entry.info.status,
      damage: entry.damage ?? null,
      format: entry.damage === undefined ? entry.info.format : null,
      compression: entry.damage === undefined ? entry.info.compression : null,
      startTime: entry.info.startTime.toISOString(),
      stopTime: entry.complete ? entry.info.stopTime.toISOString() : null,
      sizeBytes: entry.damage === undefined ? entry.info.sizeBytes : null,
      dataBytes: entry.damage === undefined ? entry.info.dataBytes : null,
      timeline: entry.info.timeline || null,
      startLsn: entry.info.startLsn || null,
      stopLsn: entry.info.stopLsn || null,
      walFiles: wal.files,
      walBytes: wal.bytes,
      firstWalFile: wal.first?.name ?? null,
      lastWalFile: wal.last?.name ?? null,
      tablespaces: entry.info.tablespaces,
      pageVerification: pageVerification(entry),
      checksumErrors: entry.info.pageChecksumErrors ?? null,
      checksumErrorFiles: entry.info.pageChecksumErrorFiles ?? [],
      location: joinKey(entry.storage.location, entry.key),
      lastVerifyChksum: verifyJson(verified.chksum),
      lastVerifyRestore: verifyJson(verified.restore),
    }));
    process.stdout.write(JSON.stringify(json, null, 2) + '\n');
    return 0;
  }

  const time = (e: CatalogEntry) => {
    if (e.damage !== undefined) return '-';
    return formatTimestamp(e.complete ? e.info.stopTime : e.info.startTime);
  };
  if (o.showAll) {
    const blocks = rows.map(({ server, entry, wal, verified }) => {
      const fields: [string, string][] = [
        ['SERVER NAME', server.name],
        ['BACKUP ID', entry.info.id],
        ['BACKUP NAME', entry.info.name ?? 'none'],
        ['BACKUP PARENT', entry.info.parent ?? 'none'],
        ['BACKUP STATUS', entry.info.status],
        ['BACKUP TIME', time(entry)],
        ['BACKUP SIZE', entry.damage !== undefined ? '-' : formatBytes(entry.info.sizeBytes)],
        ['WAL(S) SIZE', formatBytes(wal.bytes)],
        ['NO. OF WALS', String(wal.files)],
        ['FIRST WAL FILE', wal.first?.name ?? 'none'],
        ['CREATION TIME', wal.first ? formatTimestamp(wal.first.mtime) : 'none'],
        ['LAST WAL FILE', wal.last?.name ?? 'none'],
        ['CREATION TIME', wal.last ? formatTimestamp(wal.last.mtime) : 'none'],
        ['CHECKSUM ERRORS', checksumErrorsText(entry)],
        ['LAST VERIFY-CHKSUM', verifyText(verified.chksum)],
        ['LAST VERIFY-RESTORE', verifyText(verified.restore)],
      ];
      const width = Math.max(...fields.map(([k]) => k.length));
      return fields.map(([k, v]) => `${k.padEnd(width)} : ${v}`).join('\n');
    });
    process.stdout.write(blocks.join('\n\n') + (blocks.length ? '\n' : ''));
    return 0;
  }
  const header = [
    'SERVER NAME',
    'BACKUP ID',
    'BACKUP NAME',
    'BACKUP PARENT',
    'BACKUP TIME',
    'BACKUP SIZE',
    'WAL(s) SIZE',
    'WAL FILES',
    'STATUS',
  ];
  const table = rows.map(({ server, entry, wal }) => [
    server.name,
    entry.info.id,
    entry.info.name ?? 'none',
    entry.info.parent ?? 'none',
    time(entry),
    entry.complete ? formatBytes(entry.info.sizeBytes) : '-',
    formatBytes(wal.bytes),
    String(wal.files),
    entry.info.status,
  ]);
  process.stdout.write(
    formatTable(header, table)
      .split('\n')
      .map((l) => (l ? ' ' + l : ''))
      .join('\n') + '\n',
  );
  return 0;
}
