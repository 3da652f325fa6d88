// Command: VERIFY-CHKSUM, every checksum of the selected backups recomputed and reported.

import { listBackups, type CatalogEntry } from '../catalog/catalog.js';
import { BACKUPINFO_FILE } from '../catalog/layout.js';
import { chainProblem } from '../catalog/chain.js';
import { verifyBackup, type VerifyResult } from '../catalog/verify-backup.js';
import { BartError, errorMessage } from '../util/errors.js';
import { recordVerification } from '../catalog/verify-record.js';
import { formatTable } from '../util/format.js';
import { log } from '../util/log.js';
import { selectServers, type CommandContext } from './context.js';

/** VERIFY-CHKSUM options. */
export interface VerifyOptions {
  server?: string;
  backupid?: string;
}

/**
 * Verifies one backup; whatever goes wrong is a failure of this backup, never the end of the
 * command (the next backups are still checked).
 */
async function verifyOne(entry: CatalogEntry): Promise<VerifyResult> {
  if (entry.damage !== undefined) return { failures: [`${BACKUPINFO_FILE}: ${entry.damage}`], filesChecked: 0 };
  try {
    return await verifyBackup(entry);
  } catch (err) {
    return { failures: [`cannot be verified: ${errorMessage(err)}`], filesChecked: 0 };
  }
}

/** `bart VERIFY-CHKSUM`: recomputes every checksum of the selected backups; exit 1 on any failure. */
export async function verifyChksum(ctx: CommandContext, options: unknown): Promise<number> {
  const o = options as VerifyOptions;
  const rows: string[][] = [];
  let failed = 0;
  for (const server of selectServers(ctx.config, o.server)) {
    const all = await listBackups(ctx.config, server);
    // A damaged backup is verified too: it fails with the reason, so that it is not mistaken for a good one.
    const entries = all.filter((e) => e.complete || e.damage !== undefined);
    const selected =
      !o.backupid || o.backupid.toLowerCase() === 'all'
        ? entries
        : entries.filter((e) => e.info.id === o.backupid || e.info.name === o.backupid);
    if (
      o.backupid &&
      o.backupid.toLowerCase() !== 'all' &&
      selected.length === 0 &&
      o.server &&
      o.server.toLowerCase() !== 'all'
    ) {
      throw new BartError(`backup "${o.backupid}" not found for server ${server.name}`);
    }
    for (const entry of selected) {
      // An incremental is only as good as its chain: a missing ancestor fails it too.
      const broken = entry.damage === undefined ? chainProblem(all, entry) : undefined;
      const result = await verifyOne(entry);
      if (broken) result.failures.unshift(broken);
      if (result.failures.length === 0) {
        rows.push([server.name, entry.info.id, 'OK']);
        log.fileOnly('INFO', `VERIFY-CHKSUM ${server.name} ${entry.info.id}: OK (${result.filesChecked} files)`);
      } else {
        failed++;
        rows.push([
          server.name,
          entry.info.id,
          `FAILED (${result.failures[0]}${result.failures.length > 1 ? `, and ${result.failures.length - 1} more` : ''})`,
        ]);
        for (const f of result.failures) log.error(`server ${server.name} backup ${entry.info.id}: ${f}`);
      }
      // The last result, for SHOW-BACKUPS.
      const failure = result.failures[0];
      await recordVerification(entry.storage, entry.key, {
        command: 'VERIFY-CHKSUM',
        time: new Date().toISOString(),
        result: failure === undefined ? 'OK' : 'FAILED',
        ...(failure === undefined ? { details: `${result.filesChecked} files` } : { reason: failure }),
      });
    }
  }
  if (rows.length === 0) log.info('no backups to verify');
  else
    process.stdout.write(
      formatTable(['SERVER NAME', 'BACKUP ID', 'VERIFY'], rows)
        .split('\n')
        .map((l) => (l ? ' ' + l : ''))
        .join('\n') + '\n',
    );
  return failed > 0 ? 1 : 0;
}
