// Restore phase: the recovery configuration of the restored cluster, restore_command, target, signal file.

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { BackupInfo } from '../catalog/backup-info.js';
import type { BartConfig, ServerConfig } from '../config/types.js';
import type { RestoreTarget } from '../hosts/restore-target.js';
import { scpRestoreCommand, sshArchiveGetRestoreCommand } from '../hosts/ssh/restore-target.js';
import {
  mergeAutoConf,
  recoverySettings,
  recoverySettingsIn,
  shellQuoteForRestoreCommand,
  signalFileName,
} from '../postgres/recovery-config.js';
import { bartScriptPath } from '../util/bart-binary.js';
import { BartError } from '../util/errors.js';
import { log } from '../util/log.js';
import { COPIED_WAL_DIR } from './files.js';
import type { ParsedTarget } from './recovery-target.js';

/** What decides the recovery configuration of a restored cluster. */
export interface RecoveryConfigRequest {
  config: BartConfig;
  server: ServerConfig;
  info: BackupInfo;
  /** The restored data directory. */
  path: string;
  target: ParsedTarget;
  /** -c: WAL was copied into {@link COPIED_WAL_DIR}. */
  copyWals: boolean;
  /** The server's WAL archive is a directory on the BART host (POSIX), which scp can read; else ARCHIVE-GET must fetch. */
  archiveIsDirectory: boolean;
  /** --standby: standby.signal instead of recovery.signal. */
  standby: boolean;
}

/** A backup of a standby carries its signal file; only what this restore asks for may remain. */
export async function removeSignalFiles(target: RestoreTarget, path: string): Promise<void> {
  await target.remove(join(path, 'standby.signal'));
  await target.remove(join(path, 'recovery.signal'));
}

/** This installation's bin/bart.js, which restore_command runs; refused when it is missing. */
function bartScript(): string {
  const script = bartScriptPath();
  if (!existsSync(script)) {
    throw new BartError('cannot find bin/bart.js above the pgbart installation, needed for restore_command');
  }
  return script;
}

/** restore_command for the restored cluster. */
function restoreCommand(r: RecoveryConfigRequest, remote: boolean): string {
  if (r.copyWals) return `cp ${shellQuoteForRestoreCommand(join(r.path, COPIED_WAL_DIR))}/%f %p`;
  const bartHost = r.config.global.bartHost;
  const bartHostDest = `${bartHost.user}@${bartHost.host}`;
  // On another host, bart is not there: fetch from the BART host's archive with scp, as BART did;
  // an archive in a bucket is fetched by bart ARCHIVE-GET on the BART host, over ssh.
  if (remote && r.archiveIsDirectory) return scpRestoreCommand(bartHostDest, r.server.archivePath);
  if (remote)
    return sshArchiveGetRestoreCommand(bartHostDest, [process.execPath, bartScript()], r.config.path, r.server.name);
  const q = shellQuoteForRestoreCommand;
  const bart = [process.execPath, bartScript()].map(q).join(' ');
  const get = `${bart} -c ${q(r.config.path)} ARCHIVE-GET -s ${q(r.server.name)} %f %p`;
  if (!r.archiveIsDirectory) return get;
  // A plain segment in the archive directory is copied by sh, as BART's restore_command did, without a Node start
  // per segment (PostgreSQL checks the size and every record of what it is given, and fsyncs what it keeps);
  // anything else — a .gz, a missing file, a failed copy — is ARCHIVE-GET's. Also with archive_async: measured, the
  // copy kept replay faster than serving segments prefetched into the spool (each written and fsynced once more).
  const archived = `${q(r.server.archivePath)}/%f`;
  return `[ -f ${archived} ] && [ ! -L ${archived} ] && cp -- ${archived} %p || ${get}`;
}

/**
 * Adds the recovery settings to postgresql.auto.conf (replacing older ones), creates the signal file
 * and warns about recovery settings left in postgresql.conf. Returns the settings written.
 */
export async function writeRecoveryConfig(
  r: RecoveryConfigRequest,
  target: RestoreTarget,
): Promise<[string, string][]> {
  const major = Math.floor(r.info.serverVersionNum / 10000);
  const settings = recoverySettings({
    major,
    restoreCommand: restoreCommand(r, target.spec.kind === 'ssh'),
    target: r.target.target,
    inclusive: r.target.inclusive,
    ...(r.target.timeline !== undefined ? { timeline: r.target.timeline } : {}),
    ...(r.target.action !== undefined ? { action: r.target.action } : {}),
    standby: r.standby,
  });
  const autoConf = join(r.path, 'postgresql.auto.conf');
  const existing = (await target.readFile(autoConf)) ?? '';
  const comment =
    `recovery settings written by pgbart RESTORE of backup ${r.info.id} (server ${r.server.name}) ` +
    `at ${new Date().toISOString()}`;
  await target.writeFile(autoConf, mergeAutoConf(existing, settings, comment), 0o600);
  await target.writeFile(join(r.path, signalFileName({ standby: r.standby })), '', 0o600);
  const stale = recoverySettingsIn((await target.readFile(join(r.path, 'postgresql.conf'))) ?? '');
  if (stale.length > 0) {
    log.warning(
      `postgresql.conf of the restored cluster sets ${stale.join(', ')}; ` +
        'postgresql.auto.conf overrides restore_command and the targets, but check the rest',
    );
  }
  return settings;
}
