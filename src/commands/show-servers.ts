// Command: SHOW-SERVERS, each server's settings, disk use and archiving reported as text or JSON.

import { join, relative, isAbsolute } from 'node:path';
import { diskUsage } from '../util/disk-usage.js';
import { countArchivedSegments } from '../archive/wal-archive.js';
import { GZIP_SUFFIX } from '../catalog/layout.js';
import { formatRetentionPolicy } from '../config/retention-policy.js';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { withConnection } from '../postgres/connection.js';
import { readArchiveSettings } from '../postgres/server-settings.js';
import { errorMessage } from '../util/errors.js';
import { formatBytes } from '../util/format.js';
import { log } from '../util/log.js';
import { parseArchiveFileName } from '../wal/segment-name.js';
import { openRepositoryDriver, openWalArchiveDriver, repositoryLocation } from '../storage/open-repository.js';
import { expectedArchiveCommand } from './archive-command.js';
import { selectServers, type CommandContext } from './context.js';

/** Options of `bart SHOW-SERVERS`. */
export interface ShowServersOptions {
  server?: string;
  output: string;
}

/** One server as SHOW-SERVERS reports it (the JSON form; docs/json-output.md describes it). */
export interface ServerReport {
  serverName: string;
  backupFriendlyName: string | null;
  hostName: string;
  userName: string;
  port: number;
  remoteHost: string | null;
  retentionPolicy: string;
  diskUtilization: string;
  diskUtilizationBytes: number;
  numberOfArchives: number;
  archivePath: string;
  archiveCommand: string;
  /** Where archiveCommand came from: the running server, or what INIT would set (server unreachable). */
  archiveCommandSource: 'server' | 'config';
  xlogMethod: string;
  walCompression: 'enabled' | 'disabled';
  tablespacePaths: string | null;
  incrementalBackup: 'ENABLED' | 'DISABLED';
  description: string | null;
  /** repository [pgbart]: which driver holds the catalog. */
  repository: 'posix' | 's3';
  /** Where the catalog is: `backup_path/<server>` or `s3://bucket/prefix/server`. */
  repositoryLocation: string;
  /** repository_cipher [pgbart]: `aes-256-gcm` when the repository is encrypted at rest, else `none`. */
  repositoryCipher: 'none' | 'aes-256-gcm';
}

/** `bart SHOW-SERVERS [-s NAME|all] [--output json]`. */
export async function showServers(ctx: CommandContext, options: ShowServersOptions): Promise<number> {
  const servers = selectServers(ctx.config, options.server);
  const reports: ServerReport[] = [];
  for (const server of servers) reports.push(await serverReport(ctx.config, server));
  if (options.output === 'json') {
    process.stdout.write(`${JSON.stringify(reports, null, 2)}\n`);
  } else {
    process.stdout.write(reports.map(formatServerReport).join('\n'));
  }
  return 0;
}

/** Gathers one server's settings and catalog usage. */
export async function serverReport(config: BartConfig, server: ServerConfig): Promise<ServerReport> {
  let bytes: number;
  let archives: number;
  if (server.repository.kind === 's3') {
    ({ bytes, archives } = await objectStorageUsage(config, server));
  } else {
    const serverDir = join(config.global.backupPath, server.name);
    bytes = await diskUsage(serverDir);
    // An archive_path outside backup_path/<server> still holds this server's WAL: count it too.
    const rel = relative(serverDir, server.archivePath);
    if (rel.startsWith('..') || isAbsolute(rel)) bytes += await diskUsage(server.archivePath);
    archives = await countArchivedSegments(server.archivePath);
  }

  let archiveCommand = expectedArchiveCommand(config, server);
  let archiveCommandSource: ServerReport['archiveCommandSource'] = 'config';
  try {
    const settings = await withConnection(
      { host: server.host, port: server.port, user: server.user, connectTimeout: 5 },
      readArchiveSettings,
    );
    archiveCommand = settings.archiveCommandShown;
    archiveCommandSource = 'server';
  } catch (err) {
    log.debug(
      `server "${server.name}" not reachable for SHOW-SERVERS (${errorMessage(err)}); showing the configured archive_command`,
    );
  }

  const tablespaces = [...server.tablespacePath].map(([oid, path]) => `${oid}=${path}`).join(';');
  return {
    serverName: server.name,
    backupFriendlyName: server.backupName ?? null,
    hostName: server.host,
    userName: server.user,
    port: server.port,
    remoteHost: server.remoteHost ? `${server.remoteHost.user}@${server.remoteHost.host}` : null,
    retentionPolicy: formatRetentionPolicy(server.retentionPolicy),
    diskUtilization: formatBytes(bytes),
    diskUtilizationBytes: bytes,
    numberOfArchives: archives,
    archivePath: server.archivePath,
    archiveCommand,
    archiveCommandSource,
    xlogMethod: server.xlogMethod,
    walCompression: server.walCompression ? 'enabled' : 'disabled',
    tablespacePaths: tablespaces === '' ? null : tablespaces,
    incrementalBackup: server.allowIncrementalBackups ? 'ENABLED' : 'DISABLED',
    description: server.description ?? null,
    repository: server.repository.kind,
    repositoryLocation: repositoryLocation(config, server),
    repositoryCipher: server.repositoryCipher,
  };
}

/** Bytes stored below an S3 repository's root (its archived_wals included) and the number of archived segments. */
async function objectStorageUsage(
  config: BartConfig,
  server: ServerConfig,
): Promise<{ bytes: number; archives: number }> {
  // Stored bytes as they are (encrypted ones included): no passphrase is needed to see how much a bucket holds.
  const repository = openRepositoryDriver(config, server);
  const archive = openWalArchiveDriver(server);
  try {
    let bytes = 0;
    for await (const page of repository.list('')) for (const o of page.objects) bytes += o.size;
    let archives = 0;
    for await (const page of archive.list('', { shallow: true })) {
      for (const o of page.objects) {
        const bare = o.key.endsWith(GZIP_SUFFIX) ? o.key.slice(0, -GZIP_SUFFIX.length) : o.key;
        if (parseArchiveFileName(bare)?.kind === 'segment') archives++;
      }
    }
    return { bytes, archives };
  } finally {
    await repository.close();
    await archive.close();
  }
}

/** Width of BART's longest key, "BACKUP FRIENDLY NAME": every key is padded to it. */
const KEY_WIDTH = 20;

/** BART's `KEY : value` block for one server, fields in BART's order (servers are separated by a blank line). */
export function formatServerReport(r: ServerReport): string {
  const fields: Array<[string, string]> = [
    ['SERVER NAME', r.serverName],
    ['BACKUP FRIENDLY NAME', r.backupFriendlyName ?? ''],
    ['HOST NAME', r.hostName],
    ['USER NAME', r.userName],
    ['PORT', String(r.port)],
    ['REMOTE HOST', r.remoteHost ?? ''],
    ['RETENTION POLICY', r.retentionPolicy],
    ['DISK UTILIZATION', r.diskUtilization],
    ['NUMBER OF ARCHIVES', String(r.numberOfArchives)],
    ['ARCHIVE PATH', r.archivePath],
    ['ARCHIVE COMMAND', r.archiveCommand],
    ['XLOG METHOD', r.xlogMethod],
    ['WAL COMPRESSION', r.walCompression],
    ['TABLESPACE PATH(s)', r.tablespacePaths ?? ''],
    ['INCREMENTAL BACKUP', r.incrementalBackup],
    // BART printed the description with the quotes it has in bart.cfg.
    ['DESCRIPTION', r.description === null ? '' : `"${r.description}"`],
    // pgbart: after BART's fields, so that scripts reading BART's lines by position still work.
    ['REPOSITORY', r.repositoryLocation],
    ['ENCRYPTION', r.repositoryCipher],
  ];
  return `${fields.map(([k, v]) => `${k.padEnd(KEY_WIDTH)}: ${v}`.trimEnd()).join('\n')}\n`;
}
