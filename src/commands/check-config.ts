// Command: CHECK-CONFIG, each server's configuration, connections, archiving and scanner checked.

import { joinKey, type RepositoryStorage } from '../storage/storage.js';
import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access, mkdtemp, open, rm, stat, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type pg from 'pg';
import { findArchived } from '../catalog/catalog.js';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { connect, type ConnectionTarget } from '../postgres/connection.js';
import { explainSshFailure } from '../hosts/ssh/errors.js';
import { oneShotSshArgs, scpFetchArgs } from '../hosts/ssh/session.js';
import { probeReplicationConnection } from '../postgres/replication-probe.js';
import { isScannerRunning } from '../scanner/client.js';
import { scannerSocketPath } from '../scanner/paths.js';
import { openGlobalS3Repository, openRepository, repositoryLocation } from '../storage/open-repository.js';
import { checkBucket } from '../storage/s3/check-bucket.js';
import {
  archivingEnabled,
  readArchiveSettings,
  readRoleAttributes,
  type ArchiveSettings,
} from '../postgres/server-settings.js';
import { errorMessage, isErrnoError } from '../util/errors.js';
import { log } from '../util/log.js';
import { currentUserName, isRoot, lookupOsUser } from '../util/os-user.js';
import { shellQuote } from '../util/shell-quote.js';
import { ARCHIVER_LOCK } from '../archive/async-archiver.js';
import { queuedFiles, readLastError, spoolPaths } from '../archive/async-spool.js';
import { liveLockHolder } from '../catalog/lock.js';
import { archiveNeedsPush, archivesLocally, bartScriptPath, expectedArchiveCommand } from './archive-command.js';
import { openWalArchive } from '../storage/open-repository.js';
import { selectServers, type CommandContext } from './context.js';

/** Options of `bart CHECK-CONFIG`. */
export interface CheckConfigOptions {
  server?: string;
}

/** How long CHECK-CONFIG waits for the switched WAL segment to reach the archive. */
export const ARCHIVE_WAIT_SECONDS = 30;

/** A failed check: the message says what is wrong and how to fix it. */
class CheckFailed extends Error {}

/** A check that could not run because an earlier one failed (not counted twice). */
class CheckSkipped extends Error {}

/** Counts results and prints each as `INFO:  <label>: success` or `ERROR:  <label>: <why>`. */
class CheckReport {
  failures = 0;

  /** Runs one check; its return value (if any) is shown after "success". Returns true on success. */
  async run(label: string, fn: () => Promise<string | void>): Promise<boolean> {
    try {
      const detail = await fn();
      log.info(`${label}: success${detail ? ` (${detail})` : ''}`);
      return true;
    } catch (err) {
      if (err instanceof CheckSkipped) {
        log.warning(`${label}: not checked: ${err.message}`);
        return false;
      }
      this.failures++;
      log.error(`${label}: ${errorMessage(err)}`);
      return false;
    }
  }
}

/**
 * `bart CHECK-CONFIG` checks the [BART] section; `bart CHECK-CONFIG -s NAME|all` checks each server
 * end to end. Every check is printed; a failure does not stop the checks that do not depend on it.
 */
export async function checkConfig(ctx: CommandContext, options: CheckConfigOptions): Promise<number> {
  const report = new CheckReport();
  if (options.server === undefined) {
    await checkGlobal(ctx.config, report);
  } else {
    for (const server of selectServers(ctx.config, options.server)) await checkServer(ctx.config, server, report);
  }
  if (report.failures > 0) {
    log.error(`${report.failures} check${report.failures === 1 ? '' : 's'} failed`);
    return 1;
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
// [BART] section

async function checkGlobal(config: BartConfig, report: CheckReport): Promise<void> {
  const g = config.global;
  log.info(`Checking the [BART] section of ${config.path}`);
  await report.run(`BART user "${g.bartHost.user}"`, async () => `running as "${currentUserName()}"`);
  await report.run(`configuration file is readable by "${g.bartHost.user}"`, async () => {
    // bart reads it as root before switching users; archive_command and cron jobs read it as the BART user.
    try {
      await access(config.path, constants.R_OK);
    } catch (err) {
      throw new CheckFailed(
        `cannot read "${config.path}" (${describeFsError(err)}): chown ${g.bartHost.user} "${config.path}"`,
      );
    }
    return undefined;
  });
  await report.run(`backup_path "${g.backupPath}" is writable`, async () => {
    const existing = await nearestExisting(g.backupPath);
    await probeWritableDir(
      existing,
      `backup_path: make "${existing}" writable by "${g.bartHost.user}" (chown ${g.bartHost.user} ${existing})`,
    );
    if (existing !== g.backupPath)
      return `it does not exist yet; "bart INIT" will create it ("${existing}" is writable)`;
    return undefined;
  });
  // repository = s3 in [BART]: its bucket (below s3_prefix), before any server uses it.
  const bucket = openGlobalS3Repository(config);
  if (bucket)
    await report.run(`repository ${bucket.location} is reachable and writable`, async () => {
      try {
        return await checkBucket(bucket);
      } finally {
        await bucket.close();
      }
    });
  if (g.pgBasebackupPath) {
    const path = g.pgBasebackupPath;
    await report.run(`pg_basebackup_path "${path}" is executable`, async () => {
      try {
        await access(path, constants.X_OK);
      } catch (err) {
        throw new CheckFailed(
          `${describeFsError(err)}: set pg_basebackup_path in ${config.path} to the pg_basebackup of your PostgreSQL installation, or remove it to use pgbart's own backup engine`,
        );
      }
      const out = await runProgram(path, ['--version']);
      if (out.code !== 0) throw new CheckFailed(`"${path} --version" failed: ${(out.stderr || out.stdout).trim()}`);
      return `returns version "${out.stdout.trim()}"`;
    });
  } else {
    log.info('pg_basebackup_path is not set: pgbart uses its native backup engine');
  }
  for (const [key, file] of [
    ['logfile', g.logfile],
    ['scanner_logfile', g.scannerLogfile],
  ] as const) {
    await report.run(`${key} "${file}" is writable`, async () => {
      try {
        await access(file, constants.W_OK);
        return undefined;
      } catch (err) {
        if (!(isErrnoError(err) && err.code === 'ENOENT'))
          throw new CheckFailed(
            `${describeFsError(err)}: make it writable by "${g.bartHost.user}" or set ${key} elsewhere`,
          );
      }
      try {
        await access(dirname(file), constants.W_OK | constants.X_OK);
      } catch (err) {
        throw new CheckFailed(
          `cannot create it in "${dirname(file)}" (${describeFsError(err)}): choose a ${key} in a directory "${g.bartHost.user}" can write`,
        );
      }
      return 'will be created';
    });
  }
}

/** The path itself if it exists, else its closest existing ancestor. */
async function nearestExisting(path: string): Promise<string> {
  let p = path;
  for (;;) {
    try {
      await stat(p);
      return p;
    } catch (err) {
      if (!(isErrnoError(err) && err.code === 'ENOENT')) return p;
      const parent = dirname(p);
      if (parent === p) return p;
      p = parent;
    }
  }
}

/** Creates and removes a file in `dir`: the only proof of writability that ACLs and read-only mounts cannot fool. */
async function probeWritableDir(dir: string, fix: string): Promise<void> {
  let st;
  try {
    st = await stat(dir);
  } catch (err) {
    throw new CheckFailed(`${describeFsError(err)}: ${fix}`);
  }
  if (!st.isDirectory()) throw new CheckFailed(`"${dir}" is not a directory: ${fix}`);
  const probe = join(dir, `.pgbart-write-test-${process.pid}`);
  try {
    const handle = await open(probe, 'wx', 0o600);
    await handle.close();
    await unlink(probe);
  } catch (err) {
    throw new CheckFailed(`cannot write in "${dir}" as "${currentUserName()}" (${describeFsError(err)}): ${fix}`);
  }
}

function describeFsError(err: unknown): string {
  if (isErrnoError(err)) {
    if (err.code === 'ENOENT') return 'does not exist';
    if (err.code === 'EACCES' || err.code === 'EPERM') return 'permission denied';
    if (err.code === 'EROFS') return 'read-only file system';
  }
  return errorMessage(err);
}

// ---------------------------------------------------------------------------------------------
// One server

async function checkServer(config: BartConfig, server: ServerConfig, report: CheckReport): Promise<void> {
  log.info(`Checking server ${server.name}`);
  const where = `[${server.sectionName}] in ${config.path}:${server.line}`;
  const target: ConnectionTarget = { host: server.host, port: server.port, user: server.user, connectTimeout: 10 };

  if (server.remoteHost) {
    const remote = `${server.remoteHost.user}@${server.remoteHost.host}`;
    await report.run(`cluster_owner and ssh/scp connectivity to ${remote}`, async () => {
      const r = await runProgram('ssh', oneShotSshArgs(remote, ['echo pgbart-ssh-ok']));
      if (r.code !== 0 || !r.stdout.includes('pgbart-ssh-ok')) {
        if (r.code === 255 || r.code === -1)
          throw new CheckFailed(
            `passwordless ssh as "${currentUserName()}" failed: ${explainSshFailure(r.stderr, { destination: remote })}`,
          );
        throw new CheckFailed(
          `ssh ${remote} runs, but a command there failed (${(r.stderr || `exit ${r.code}`).trim()}): check the login shell of "${server.remoteHost!.user}" on ${server.remoteHost!.host}`,
        );
      }
      return 'passwordless ssh works';
    });
  } else {
    await report.run(`cluster_owner "${server.clusterOwner}"`, async () => {
      if (!lookupOsUser(server.clusterOwner))
        throw new CheckFailed(
          `no OS user "${server.clusterOwner}" on this host: set cluster_owner in ${where} to the user that owns the data directory`,
        );
      return undefined;
    });
  }

  let client: pg.Client | undefined;
  await report.run(`connection to ${server.host}:${server.port} as user "${server.user}"`, async () => {
    try {
      client = await connect(target);
    } catch (err) {
      throw new CheckFailed(explainConnectionError(errorMessage(err), server, where));
    }
    const version = await client.query<{ v: string }>("SELECT current_setting('server_version') AS v");
    return `PostgreSQL ${version.rows[0]?.v ?? '?'}`;
  });
  try {
    await checkServerWithConnection(config, server, report, client, where);
  } finally {
    await (client as pg.Client | undefined)?.end().catch(() => undefined);
  }
}

async function checkServerWithConnection(
  config: BartConfig,
  server: ServerConfig,
  report: CheckReport,
  client: pg.Client | undefined,
  where: string,
): Promise<void> {
  const needClient = (): pg.Client => {
    if (!client) throw new CheckSkipped('no connection to the server');
    return client;
  };

  await report.run(`replication connection as user "${server.user}"`, async () => {
    needClient();
    try {
      const id = await probeReplicationConnection({ host: server.host, port: server.port, user: server.user });
      return `system identifier ${id.systemId}, timeline ${id.timeline}`;
    } catch (err) {
      throw new CheckFailed(explainReplicationError(errorMessage(err), server));
    }
  });

  let superuser = false;
  await report.run(`user "${server.user}" is a database superuser`, async () => {
    const role = await readRoleAttributes(needClient());
    if (!role.superuser) {
      throw new CheckFailed(
        `"${server.user}" is not a superuser: run "ALTER ROLE ${quoteIdent(server.user)} SUPERUSER" (it must also have REPLICATION), or set user in ${where} to a superuser`,
      );
    }
    superuser = true;
    return undefined;
  });

  await report.run(`cluster_owner "${server.clusterOwner}" can read the data files`, async () => {
    const c = needClient();
    if (!superuser) throw new CheckSkipped('needs a superuser to read data_directory');
    const dataDir = (await c.query<{ d: string }>("SELECT current_setting('data_directory') AS d")).rows[0]?.d ?? '';
    await checkDataFilesReadable(config, server, dataDir);
    return dataDir;
  });

  // repository = s3: the bucket instead of the catalog directories (checkBucket says what is wrong).
  if (server.repository.kind === 's3')
    await report.run(`repository ${repositoryLocation(config, server)} is reachable and writable`, async () => {
      const storage = openRepository(config, server);
      try {
        return await checkBucket(storage);
      } finally {
        await storage.close();
      }
    });
  else
    await report.run(`catalog (archive path "${server.archivePath}") is writable`, async () => {
      const fix = `run "bart INIT -s ${server.name}" to create the catalog directories (owned by "${config.global.bartHost.user}", mode 0700)`;
      await probeWritableDir(join(config.global.backupPath, server.name), fix);
      await probeWritableDir(server.archivePath, fix);
      return undefined;
    });

  let settings: ArchiveSettings | undefined;
  await report.run('archive_mode is on', async () => {
    settings = await readArchiveSettings(needClient());
    if (archivingEnabled(settings.archiveMode)) return undefined;
    if (archivingEnabled(settings.archiveModeAfterRestart)) {
      throw new CheckFailed(
        `archive_mode is off in the running server but set to ${settings.archiveModeAfterRestart} in its configuration: restart the PostgreSQL server`,
      );
    }
    throw new CheckFailed(
      `archive_mode is ${settings.archiveMode}: run "bart INIT -s ${server.name}" (sets archive_mode = on and archive_command), then restart the PostgreSQL server`,
    );
  });

  const expected = expectedArchiveCommand(config, server);
  await report.run('archive_command is set', async () => {
    if (!settings) throw new CheckSkipped('archive settings could not be read');
    if (settings.archiveLibrary !== '') {
      throw new CheckFailed(
        `the server archives through archive_library = '${settings.archiveLibrary}', not into the BART catalog: run "bart INIT -s ${server.name} -o"`,
      );
    }
    const command = settings.archiveCommand;
    if (command === '')
      throw new CheckFailed(
        `archive_command is empty: run "bart INIT -s ${server.name}" (then reload the configuration, or restart if archive_mode was off)`,
      );
    // An object-store archive takes WAL through ARCHIVE-PUSH only: a copy into archive_path goes nowhere.
    if (archiveNeedsPush(config, server) && !/ARCHIVE-PUSH/i.test(command))
      throw new CheckFailed(
        `archive_command '${command}' does not use ARCHIVE-PUSH, the only way into the WAL archive ${openWalArchive(config, server).location}: run "bart INIT -s ${server.name} -o" to set '${expected}'`,
      );
    const mentionsBart =
      /ARCHIVE-PUSH/i.test(command) || command.includes(bartScriptPath()) || command.includes(server.archivePath);
    if (!mentionsBart) {
      throw new CheckFailed(
        `archive_command '${command}' does not store WAL in "${server.archivePath}" (neither ARCHIVE-PUSH nor the archive path appears in it): run "bart INIT -s ${server.name} -o" to set '${expected}'`,
      );
    }
    if (settings.archiveCommandShown !== '(disabled)' && settings.archiveCommandShown !== command) {
      throw new CheckFailed(
        `archive_command '${command}' in the configuration files is not active yet (the server runs '${settings.archiveCommandShown}'): reload the configuration (SELECT pg_reload_conf())`,
      );
    }
    return `'${command}'`;
  });

  await report.run('WAL archiving is working', async () => {
    const c = needClient();
    if (
      !settings ||
      !archivingEnabled(settings.archiveMode) ||
      settings.archiveCommandShown === '' ||
      settings.archiveLibrary !== ''
    ) {
      throw new CheckSkipped('WAL archiving is not active on the server (see above)');
    }
    if (!superuser) throw new CheckSkipped('pg_switch_wal() needs a superuser');
    const archive = openWalArchive(config, server);
    try {
      return await checkArchivingEndToEnd(c, server, archive);
    } finally {
      await archive.close();
    }
  });

  if (server.archiveAsync) {
    await report.run('asynchronous archiving (archive_async = on)', async () => checkAsyncSpool(config, server));
  }
  if (server.allowIncrementalBackups) {
    await report.run('bart-scanner is configured and running', async () => checkScannerRunning(config, server));
  }
  if (!archivesLocally(config, server) && !archiveNeedsPush(config, server)) {
    log.info(
      `archive_command for server "${server.name}" is expected to copy WAL to ${config.global.bartHost.user}@${config.global.bartHost.host}:${server.archivePath} (e.g. '${expected}')`,
    );
  }
}

/**
 * The asynchronous archiver's state: a recorded failure is a failed check (WAL waits in the spool,
 * and once it is full, in pg_wal), naming the error and what is queued.
 */
async function checkAsyncSpool(config: BartConfig, server: ServerConfig): Promise<string> {
  const paths = spoolPaths(config, server);
  const queued = await queuedFiles(paths);
  const last = await readLastError(paths);
  const holder = await liveLockHolder(paths.root, ARCHIVER_LOCK);
  const state = `${queued.length} of at most ${server.archiveAsyncQueueMax} files queued in "${paths.queue}", archiver ${holder !== undefined ? `running (pid ${holder.pid})` : 'not running'}`;
  if (last !== undefined)
    throw new CheckFailed(
      `the WAL archiver failed: ${last} (${state}); fix the cause, then the next archive_command (or "bart ARCHIVER -s ${server.name}") pushes the queue`,
    );
  return state;
}

/**
 * Forces WAL, switches segments, and waits up to {@link ARCHIVE_WAIT_SECONDS} for the closed
 * segment to appear in the archive. Gives up early when pg_stat_archiver shows archive_command
 * failing repeatedly (PostgreSQL retries 3 times, then pauses a minute).
 */
async function checkArchivingEndToEnd(
  client: pg.Client,
  server: ServerConfig,
  archive: RepositoryStorage,
): Promise<string> {
  type ArchiverRow = {
    failed_count: string;
    last_failed_wal: string | null;
    last_failed_time: string | null;
    last_archived_wal: string | null;
  };
  const archiver = async (): Promise<ArchiverRow> =>
    (
      await client.query<ArchiverRow>(
        'SELECT failed_count::text, last_failed_wal, last_failed_time::text, last_archived_wal FROM pg_stat_archiver',
      )
    ).rows[0]!;
  if ((await client.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')).rows[0]?.r) {
    throw new CheckSkipped('the server is in recovery (a standby); pg_switch_wal() runs on primaries only');
  }
  const before = await archiver();
  // A segment switch with nothing written since the last one is a no-op: write a commit record first.
  await client.query('SELECT txid_current()');
  const walfile = (await client.query<{ w: string }>('SELECT pg_walfile_name(pg_switch_wal()) AS w')).rows[0]!.w;
  const path = joinKey(archive.location, walfile);
  log.info(`waiting up to ${ARCHIVE_WAIT_SECONDS} seconds for ${path}`);
  const deadline = Date.now() + ARCHIVE_WAIT_SECONDS * 1000;
  let now = before;
  // Success needs both: PostgreSQL counts the segment as archived (so archive_command really ran
  // and succeeded for it, a stale file of the same name proves nothing) and the file is in the archive.
  const arrived = async (row: ArchiverRow): Promise<boolean> =>
    row.last_archived_wal !== null &&
    row.last_archived_wal >= walfile &&
    (await findArchived(archive, walfile)) !== undefined;
  while (Date.now() < deadline) {
    now = await archiver();
    if (await arrived(now)) return `${walfile} arrived in the archive`;
    if (Number(now.failed_count) - Number(before.failed_count) >= 3) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  now = await archiver();
  if (await arrived(now)) return `${walfile} arrived in the archive`;
  const failed = Number(now.failed_count) - Number(before.failed_count);
  const stats = `pg_stat_archiver: failed_count ${now.failed_count}, last_failed_wal ${now.last_failed_wal ?? 'none'}${now.last_failed_time ? ` at ${now.last_failed_time}` : ''}, last_archived_wal ${now.last_archived_wal ?? 'none'}`;
  if (failed > 0) {
    throw new CheckFailed(
      `archive_command failed ${failed} time${failed === 1 ? '' : 's'} while archiving; ${walfile} did not reach "${archive.location}" (${stats}): the server log shows the command's error output; fix archive_command or run "bart INIT -s ${server.name} -o"`,
    );
  }
  throw new CheckFailed(
    `${walfile} did not reach "${archive.location}" within ${ARCHIVE_WAIT_SECONDS} seconds (${stats}): ` +
      (archive.localPath('') !== undefined
        ? `check that archive_command copies %p to "${server.archivePath}/%f"`
        : `check that archive_command runs ARCHIVE-PUSH -s ${server.name}`),
  );
}

/**
 * Verifies that the cluster owner can read PG_VERSION and global/pg_control, as BACKUP will need:
 * directly when we are the cluster owner, with its uid when we are root, else over ssh (BART's way).
 */
async function checkDataFilesReadable(config: BartConfig, server: ServerConfig, dataDir: string): Promise<void> {
  const files = [join(dataDir, 'PG_VERSION'), join(dataDir, 'global', 'pg_control')];
  const args = ['-r', files[0]!, '-a', '-r', files[1]!];
  const fix = `the data files must be readable by "${server.clusterOwner}": check cluster_owner in [${server.sectionName}] and the ownership of "${dataDir}"`;
  if (!server.remoteHost && server.clusterOwner === currentUserName()) {
    for (const f of files) {
      try {
        await access(f, constants.R_OK);
      } catch (err) {
        throw new CheckFailed(`cannot read "${f}" (${describeFsError(err)}): ${fix}`);
      }
    }
    const owner = lookupOsUser(server.clusterOwner);
    const st = await stat(dataDir);
    if (owner && st.uid !== owner.uid)
      throw new CheckFailed(`"${dataDir}" is not owned by "${server.clusterOwner}" (uid ${st.uid}): ${fix}`);
    return;
  }
  let r: ProgramResult;
  if (!server.remoteHost && isRoot()) {
    const owner = lookupOsUser(server.clusterOwner);
    if (!owner) throw new CheckFailed(`no OS user "${server.clusterOwner}" on this host`);
    r = await runProgram('test', args, { uid: owner.uid, gid: owner.gid });
  } else {
    const dest = server.remoteHost
      ? `${server.remoteHost.user}@${server.remoteHost.host}`
      : `${server.clusterOwner}@${server.host}`;
    // Whatever the permissions say, read the files for real, with scp (BART's tool) and with the
    // shell channel BACKUP uses (tar), so a missing scp or tar shows up here and not mid-backup.
    const words = ['test', ...args.map(shellQuote), '&&', 'tar', '-cf', '/dev/null', shellQuote(files[1]!)];
    r = await runProgram('ssh', oneShotSshArgs(dest, words));
    if (r.code === 255 || r.code === -1) {
      throw new CheckFailed(
        `cannot check as "${server.clusterOwner}" over ssh: ${explainSshFailure(r.stderr, { destination: dest })}`,
      );
    }
    if (r.code === 127) {
      throw new CheckFailed(
        `a command BACKUP needs is missing on ${server.remoteHost?.host ?? server.host} (${r.stderr.trim()}): install tar (and coreutils) there`,
      );
    }
    if (r.code === 0) {
      const scratch = await mkdtemp(join(tmpdir(), 'pgbart-scp-'));
      try {
        const scp = await runProgram('scp', scpFetchArgs(dest, files[0]!, join(scratch, 'PG_VERSION')));
        if (scp.code !== 0) {
          if (
            /not found|No such file or directory.*scp|sftp-server/i.test(scp.stderr) &&
            !/PG_VERSION/.test(scp.stderr)
          ) {
            throw new CheckFailed(
              `scp from ${dest} failed (${scp.stderr.trim()}): install scp/sftp (the OpenSSH server's sftp subsystem) on ${server.remoteHost?.host ?? server.host}`,
            );
          }
          throw new CheckFailed(
            `scp of ${files[0]} from ${dest} failed: ${scp.code === 255 ? explainSshFailure(scp.stderr, { destination: dest }) : scp.stderr.trim()}`,
          );
        }
      } finally {
        await rm(scratch, { recursive: true, force: true });
      }
    }
  }
  if (r.code !== 0) throw new CheckFailed(`"${server.clusterOwner}" cannot read ${files.join(' and ')}: ${fix}`);
}

/**
 * A bart-scanner daemon serves this server: its socket in bart_socket_directory answers and it
 * runs a worker for `server`; otherwise CheckFailed with the fix.
 */
async function checkScannerRunning(config: BartConfig, server: ServerConfig): Promise<string> {
  const s = await isScannerRunning(config);
  if (!s.running)
    throw new CheckFailed(
      `bart-scanner is not running (nothing answers on ${scannerSocketPath(config)}): start it with "bart-scanner --daemon"`,
    );
  if (s.servers && !s.servers.includes(server.name)) {
    throw new CheckFailed(
      `bart-scanner (pid ${s.pid}) does not scan server "${server.name}": run "bart-scanner RELOAD" so it re-reads ${config.path}`,
    );
  }
  return `pid ${s.pid}`;
}

function quoteIdent(name: string): string {
  return /^[a-z_][a-z0-9_]*$/.test(name) ? name : `"${name.replace(/"/g, '""')}"`;
}

/** Turns a libpq/node-postgres connection failure into what is wrong and how to fix it. */
function explainConnectionError(message: string, server: ServerConfig, where: string): string {
  const at = `${server.host}:${server.port}`;
  if (/ECONNREFUSED/.test(message)) {
    return `no PostgreSQL server is listening on ${at} (connection refused): start the server, or fix host/port in ${where}`;
  }
  if (/ENOTFOUND|EAI_AGAIN/.test(message)) return `host "${server.host}" cannot be resolved: fix host in ${where}`;
  if (/timeout|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH/i.test(message)) {
    return `${at} did not answer (${message.replace(/^.*?: /, '')}): check that the server runs, listen_addresses, and firewalls`;
  }
  if (/password authentication failed|no password supplied|SASL/i.test(message)) {
    return `authentication as "${server.user}" failed: put the password in ~/.pgpass of "${currentUserName()}" (${server.host}:${server.port}:*:${server.user}:PASSWORD, mode 0600)`;
  }
  if (/no pg_hba\.conf entry/.test(message)) {
    return `pg_hba.conf of the server refuses "${server.user}" from this host: add e.g. "host all ${server.user} <bart host address>/32 scram-sha-256" and reload`;
  }
  if (/role .* does not exist/.test(message))
    return `role "${server.user}" does not exist on the server: create it (CREATE ROLE ... LOGIN SUPERUSER REPLICATION) or fix user in ${where}`;
  return message;
}

function explainReplicationError(message: string, server: ServerConfig): string {
  if (/no pg_hba\.conf entry for replication|pg_hba\.conf rejects replication/.test(message)) {
    return `pg_hba.conf does not let "${server.user}" open replication connections from this host (${message}): add "host replication ${server.user} <bart host address>/32 scram-sha-256" to pg_hba.conf (before any line that rejects it) and reload`;
  }
  if (/max_wal_senders|too many clients|remaining connection slots/i.test(message)) {
    return `${message}: raise max_wal_senders (and max_connections) in postgresql.conf and restart the server`;
  }
  if (/must be (superuser or )?(a )?replication role|permission denied to start WAL sender/i.test(message)) {
    return `${message}: run "ALTER ROLE ${quoteIdent(server.user)} REPLICATION"`;
  }
  if (/wal_level/.test(message)) return `${message}: set wal_level = replica and restart the server`;
  return `replication connection failed: ${message}`;
}

/** Result of a helper program. */
interface ProgramResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runProgram(cmd: string, args: string[], ids?: { uid: number; gid: number }): Promise<ProgramResult> {
  return new Promise((resolvePromise) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(ids ?? {}) });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (err) => resolvePromise({ code: -1, stdout, stderr: errorMessage(err) }));
    child.on('close', (code) => resolvePromise({ code, stdout, stderr }));
  });
}
