// Command: RESTORE, options resolved and a backup or incremental chain restored to a path, local or remote.

import { resolve } from 'node:path';
import { openRestoreTarget } from '../hosts/restore-target-for-spec.js';
import type { TargetOptions } from '../restore/recovery-target.js';
import { runRestore, type RestoreRequest } from '../restore/restore.js';
import { requireConfSafe } from '../postgres/recovery-config.js';
import { BartError } from '../util/errors.js';
import { selectOneServer, type CommandContext } from './context.js';

/** Options of `bart RESTORE` (as commander hands them over). */
export interface RestoreOptions extends TargetOptions {
  server?: string;
  restorePath?: string;
  backupid?: string;
  remoteHost?: string;
  workers?: number;
  copyWals?: boolean;
  disableChecksum?: boolean;
  tablespaceMap?: string;
  standby?: boolean;
  delta?: boolean;
}

/** Parses `--tablespace-map OID=PATH;OID=PATH` (same form as tablespace_path in bart.cfg). */
export function parseTablespaceMap(text: string): Map<number, string> {
  const map = new Map<number, string>();
  for (const part of text
    .split(';')
    .map((p) => p.trim())
    .filter((p) => p !== '')) {
    const m = /^(\d+)=(\/.*)$/.exec(part);
    if (!m) {
      throw new BartError(
        `--tablespace-map entry "${part}" is invalid: expected OID=/absolute/path, entries separated by ";"`,
      );
    }
    const oid = Number(m[1]);
    if (map.has(oid)) throw new BartError(`--tablespace-map names OID ${oid} twice`);
    map.set(oid, resolve(m[2]!));
  }
  return map;
}

/** Resolves the options against the configuration: the server, the restore path and the settings it defaults. */
function resolveRequest(ctx: CommandContext, o: RestoreOptions): RestoreRequest {
  const server = selectOneServer(ctx.config, o.server, 'RESTORE');
  if (!o.restorePath) {
    throw new BartError(
      'RESTORE needs -p/--restore-path PATH (the directory to restore into; empty or absent, ' +
        'or with --delta a data directory of the same cluster)',
    );
  }
  // With -c the path is part of restore_command; refused in any case, before anything is written.
  requireConfSafe('-p/--restore-path', o.restorePath);
  const path = resolve(o.restorePath);
  const tablespaceMap = o.tablespaceMap !== undefined ? parseTablespaceMap(o.tablespaceMap) : undefined;
  return {
    server,
    path,
    ...(o.backupid !== undefined ? { backupId: o.backupid } : {}),
    ...(tablespaceMap !== undefined ? { tablespaceMap } : {}),
    targetOptions: o,
    workers: o.workers ?? server.workers,
    copyWals: o.copyWals === true || server.copyWalsDuringRestore,
    disableChecksum: o.disableChecksum === true,
    standby: o.standby === true,
    delta: o.delta === true,
  };
}

/**
 * `bart RESTORE`: restores a full backup, or an incremental one through its chain, into an empty or
 * absent directory (with --delta: over an existing data directory of the same cluster, rewriting only
 * what differs) on this host or (-r) on another one over ssh (see {@link runRestore}).
 * The target is opened (for -r, ssh connected) before the other options are resolved, the order
 * in which RESTORE has always checked them.
 */
export async function restore(ctx: CommandContext, options: RestoreOptions): Promise<number> {
  const target = await openRestoreTarget(options.remoteHost);
  try {
    return await runRestore(ctx.config, resolveRequest(ctx, options), target);
  } finally {
    await target.close?.().catch(() => undefined);
  }
}
