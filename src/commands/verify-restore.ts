// Command: VERIFY-RESTORE, backups proven by restoring, starting and checking them in a scratch directory.

import type { ServerConfig } from '../config/types.js';
import { findBackup, latestBackup, listBackups, type CatalogEntry } from '../catalog/catalog.js';
import { recordVerification } from '../catalog/verify-record.js';
import { verifyRestores, type VerifyRestoreResult } from '../restore/verify-restore.js';
import { BartError } from '../util/errors.js';
import { log } from '../util/log.js';
import { selectOneServer, type CommandContext } from './context.js';

/** VERIFY-RESTORE options (as commander hands them over). */
export interface VerifyRestoreOptions {
  server?: string;
  backupid?: string;
  workers?: number;
  output?: string;
}

/** The backups -i names: one (id or name), all complete ones, or by default the latest. */
function selectEntries(entries: CatalogEntry[], o: VerifyRestoreOptions, server: ServerConfig): CatalogEntry[] {
  if (o.backupid === undefined) {
    const latest = latestBackup(entries);
    if (!latest) throw new BartError(`server ${server.name} has no complete active backup to verify`);
    return [latest];
  }
  if (o.backupid.toLowerCase() === 'all') return entries.filter((e) => e.complete);
  return [findBackup(entries, server, o.backupid)];
}

/** `backup <id> (<name>): VERIFY-RESTORE OK in 12.3 s (amcheck: 5 databases, checksums: 1,234 files)`. */
function verdictLine(r: VerifyRestoreResult): string {
  const who = `backup ${r.id}${r.name ? ` (${r.name})` : ''}`;
  const details = r.details ? ` (${r.details})` : '';
  if (r.ok) return `${who}: VERIFY-RESTORE OK in ${r.seconds.toFixed(1)} s${details}`;
  return `${who}: VERIFY-RESTORE FAILED (${r.reason}) after ${r.seconds.toFixed(1)} s`;
}

/** The JSON report of one backup (docs/json-output.md). */
function jsonOf(server: string, r: VerifyRestoreResult): Record<string, unknown> {
  return {
    server,
    id: r.id,
    name: r.name ?? null,
    result: r.ok ? 'OK' : 'FAILED',
    reason: r.reason ?? null,
    problems: r.problems,
    startTime: r.startedAt.toISOString(),
    stopTime: r.finishedAt.toISOString(),
    seconds: r.seconds,
    databaseCheck: r.databases ? { ok: r.databases.ok, summary: r.databases.summary } : null,
    dataChecksums: r.dataChecksums ?? null,
    pageChecksums: r.checksums
      ? {
          checked: r.checksums.checked,
          ok: r.checksums.ok,
          files: r.checksums.files,
          pages: r.checksums.pages,
          failedPages: r.checksums.failedPages,
        }
      : null,
    binaries: r.binaries,
  };
}

/**
 * `bart VERIFY-RESTORE`: restores backups into a scratch directory, starts and checks them (see
 * {@link verifyRestores}), prints a verdict per backup (or a JSON report), and records each result
 * in the catalog for SHOW-BACKUPS. Exit 1 when any backup failed.
 */
export async function verifyRestore(ctx: CommandContext, options: unknown): Promise<number> {
  const o = options as VerifyRestoreOptions;
  const server = selectOneServer(ctx.config, o.server, 'VERIFY-RESTORE');
  const entries = await listBackups(ctx.config, server);
  const selected = selectEntries(entries, o, server);
  if (selected.length === 0) throw new BartError(`server ${server.name} has no complete backup to verify`);
  const json = o.output === 'json';
  const report: Record<string, unknown>[] = [];
  let failed = 0;
  const opts = { workers: o.workers ?? server.workers, consoleInfo: !json };
  await verifyRestores(ctx.config, server, selected, opts, async (r) => {
    const entry = selected.find((e) => e.info.id === r.id)!;
    await recordVerification(entry.storage, entry.key, {
      command: 'VERIFY-RESTORE',
      time: r.finishedAt.toISOString(),
      result: r.ok ? 'OK' : 'FAILED',
      ...(r.reason !== undefined ? { reason: r.reason } : {}),
      ...(r.details ? { details: r.details } : {}),
    });
    if (!r.ok) {
      failed++;
      for (const p of r.problems) log.fileOnly('ERROR', `VERIFY-RESTORE ${server.name} ${r.id}: ${p}`);
    }
    log.fileOnly(r.ok ? 'INFO' : 'ERROR', verdictLine(r));
    // The verdicts are the command's output (like VERIFY-CHKSUM's table): on stdout, as each backup ends.
    if (json) report.push(jsonOf(server.name, r));
    else process.stdout.write(verdictLine(r) + '\n');
  });
  if (json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  return failed > 0 ? 1 : 0;
}
