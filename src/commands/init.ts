// Command: INIT, catalog directories created and the server's WAL archiving configured.

import { constants } from 'node:fs';
import { access, chmod, mkdir, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { withConnection } from '../postgres/connection.js';
import {
  alterSystem,
  archivingEnabled,
  readArchiveSettings,
  readRoleAttributes,
  reloadConf,
} from '../postgres/server-settings.js';
import { BartError, errorMessage, isErrnoError } from '../util/errors.js';
import { log } from '../util/log.js';
import { currentUserName } from '../util/os-user.js';
import { repositoryLocation } from '../storage/open-repository.js';
import { archivesLocally, bartScriptPath, expectedArchiveCommand } from './archive-command.js';
import { selectServers, type CommandContext } from './context.js';

/** Options of `bart INIT`. */
export interface InitOptions {
  server?: string;
  override?: boolean;
  rebuild?: boolean;
  backupid?: string;
  /** false with --no-configure. */
  configure: boolean;
}

/** What INIT changed on a server, and what the DBA must do about it. */
export interface ArchiveConfigureResult {
  changed: string[];
  /** A restart is needed before archiving takes effect (archive_mode or wal_level changed). */
  restartNeeded: boolean;
  /** pg_reload_conf() was called by INIT. */
  reloaded: boolean;
}

/**
 * `bart INIT [-s NAME|all] [-o] [--no-configure]`: creates each server's catalog directories and
 * configures WAL archiving through ALTER SYSTEM. A server that fails does not stop the others;
 * the exit status says whether all succeeded.
 */
export async function init(ctx: CommandContext, options: InitOptions): Promise<number> {
  if (options.rebuild) return (await import('./init-rebuild.js')).initRebuild(ctx, options.server, options.backupid);
  if (options.backupid !== undefined)
    throw new BartError('INIT -i/--backupid is only valid together with -r/--rebuild');
  const servers = selectServers(ctx.config, options.server);
  let failures = 0;
  for (const server of servers) {
    try {
      await createCatalogDirs(ctx.config, server);
      if (options.configure) await configureArchiving(ctx.config, server, options.override === true);
    } catch (err) {
      failures++;
      log.error(`server "${server.name}": ${errorMessage(err)}`);
    }
  }
  return failures === 0 ? 0 : 1;
}

/** mkdir with mode 0700 that also tightens the mode of a directory we created earlier. */
async function ensurePrivateDir(path: string): Promise<boolean> {
  let created = false;
  try {
    await mkdir(path, { mode: 0o700 });
    created = true;
  } catch (err) {
    if (!(isErrnoError(err) && err.code === 'EEXIST')) {
      const hint =
        isErrnoError(err) && err.code === 'EACCES'
          ? ' (permission denied: the BART user must be able to write there)'
          : '';
      throw new BartError(`cannot create directory "${path}": ${errorMessage(err)}${hint}`);
    }
    const st = await stat(path);
    if (!st.isDirectory()) throw new BartError(`"${path}" exists but is not a directory`);
  }
  // mkdir's mode is filtered by the umask; the catalog must be private whatever the umask is.
  await chmod(path, 0o700).catch((err: unknown) => {
    throw new BartError(`cannot set mode 0700 on "${path}": ${errorMessage(err)} (is it owned by another user?)`);
  });
  return created;
}

/**
 * Creates backup_path and backup_path/<server> (mode 0700, owned by the BART user) on this host in
 * every case: the server's locks live there even when its repository is in a bucket
 * (catalog/lock.ts). The archive path is created when the WAL archive is a local directory. A
 * bucket gets nothing: object storage has no directories to make, and INIT does not write into it;
 * the DBA is told to check it with CHECK-CONFIG, which writes, reads and removes a test object.
 */
export async function createCatalogDirs(config: BartConfig, server: ServerConfig): Promise<void> {
  try {
    await mkdir(config.global.backupPath, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new BartError(
      `cannot create backup_path "${config.global.backupPath}" (${config.path}): ${errorMessage(err)}`,
    );
  }
  const serverDir = join(config.global.backupPath, server.name);
  const made: string[] = [];
  if (await ensurePrivateDir(serverDir)) made.push(serverDir);
  // archive_path is where a POSIX server's WAL archive is; an S3 server's is in the bucket.
  const archiveDir = server.repository.kind === 's3' ? undefined : server.archivePath;
  if (archiveDir !== undefined) {
    try {
      // Parents of a custom archive_path may be missing; the archive directory itself is made below.
      await mkdir(dirname(archiveDir), { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new BartError(`cannot create archive path "${archiveDir}": ${errorMessage(err)}`);
    }
    if (await ensurePrivateDir(archiveDir)) made.push(archiveDir);
  }
  if (made.length > 0) log.info(`created ${made.map((d) => `"${d}"`).join(' and ')} for server "${server.name}"`);
  else if (archiveDir !== undefined)
    log.info(`catalog directories of server "${server.name}" already exist (${archiveDir})`);
  else log.info(`lock directory "${serverDir}" of server "${server.name}" already exists`);
  if (server.repository.kind === 's3')
    log.info(
      `server "${server.name}" keeps its backups and WAL in ${repositoryLocation(config, server)}: INIT creates nothing there; ` +
        `check that it is reachable and writable with bart CHECK-CONFIG -s ${server.name}`,
    );
}

/**
 * Sets archive_mode/archive_command by BART's rules: archive_mode becomes on when off (restart
 * needed); archive_command is written when empty, or always with -o; an existing one is kept
 * otherwise. When only archive_command changed, INIT reloads the configuration itself.
 */
export async function configureArchiving(
  config: BartConfig,
  server: ServerConfig,
  override: boolean,
): Promise<ArchiveConfigureResult> {
  const target = { host: server.host, port: server.port, user: server.user };
  return withConnection(target, async (client) => {
    log.info(`setting archive_mode/archive_command for server "${server.name}"`);
    const role = await readRoleAttributes(client);
    if (!role.superuser) {
      throw new BartError(
        `user "${server.user}" is not a superuser, so INIT cannot use ALTER SYSTEM: make it one (ALTER ROLE ${server.user} SUPERUSER) or run INIT with --no-configure and set archive_command yourself`,
      );
    }
    const settings = await readArchiveSettings(client);
    const result: ArchiveConfigureResult = { changed: [], restartNeeded: false, reloaded: false };
    const wanted = expectedArchiveCommand(config, server);
    if (server.archiveCommand === undefined && archivesLocally(config, server)) await requireReadableByBartUser(config);

    if (settings.walLevel === 'minimal') {
      await alterSystem(client, 'wal_level', 'replica');
      result.changed.push('wal_level = replica');
      result.restartNeeded = true;
    }
    if (!archivingEnabled(settings.archiveModeAfterRestart)) {
      await alterSystem(client, 'archive_mode', 'on');
      result.changed.push('archive_mode = on');
      result.restartNeeded = true;
    } else if (settings.archiveModePendingRestart) {
      result.restartNeeded = true;
    }

    if (settings.archiveLibrary !== '' && !override) {
      log.warning(
        `server "${server.name}" archives through archive_library = '${settings.archiveLibrary}'; archive_command left alone (use -o to replace it with pgbart's archive_command)`,
      );
    } else if (settings.archiveCommand !== '' && !override) {
      if (settings.archiveCommand === wanted)
        log.info(`archive_command of server "${server.name}" is already set to pgbart's command`);
      else
        log.info(
          `archive_command of server "${server.name}" is already set ('${settings.archiveCommand}'); left unchanged (use -o/--override to replace it)`,
        );
    } else if (settings.archiveCommand !== wanted) {
      if (settings.archiveLibrary !== '') {
        await alterSystem(client, 'archive_library', '');
        result.changed.push("archive_library = ''");
      }
      await alterSystem(client, 'archive_command', wanted);
      result.changed.push(`archive_command = ${wanted}`);
    } else {
      log.info(`archive_command of server "${server.name}" is already set to pgbart's command`);
    }

    if (result.changed.length > 0) log.info(`server "${server.name}": ALTER SYSTEM SET ${result.changed.join(', ')}`);
    if (result.restartNeeded) {
      const dataDir = await client
        .query<{ d: string }>("SELECT current_setting('data_directory') AS d")
        .then((r) => r.rows[0]?.d ?? '<data directory>');
      log.warning(
        `archive_mode is not active yet on server "${server.name}": restart the PostgreSQL server (e.g. pg_ctl restart -D ${dataDir}) for archiving to start`,
      );
    } else if (result.changed.length > 0) {
      await reloadConf(client);
      result.reloaded = true;
      log.info(
        `archive_command is set for server "${server.name}"; configuration reloaded with pg_reload_conf(), no restart needed`,
      );
    } else {
      log.info(`WAL archiving of server "${server.name}" needs no change: no reload or restart needed`);
    }
    return result;
  });
}

/**
 * The archive_command INIT writes runs bart as the server's OS user (here: the BART user) with this
 * bart.cfg. bart read the config as root before switching users, so a config only root can read
 * works for INIT itself but would make every archive_command fail: refuse before ALTER SYSTEM.
 */
export async function requireReadableByBartUser(config: BartConfig): Promise<void> {
  for (const [what, path] of [
    ['configuration file', config.path],
    ['bart program', bartScriptPath()],
  ] as const) {
    try {
      await access(path, constants.R_OK);
    } catch (err) {
      throw new BartError(
        `the ${what} "${path}" is not readable by the BART user "${currentUserName()}" (${errorMessage(err)}), so the archive_command INIT would set could not run: ` +
          `make it readable (e.g. chown ${currentUserName()} "${path}", or install pgbart where that user can read it)`,
      );
    }
  }
}
