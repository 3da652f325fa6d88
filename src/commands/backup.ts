// Command: BACKUP, options resolved and the full, incremental or pg_basebackup engine run.

import { backupNameProblem, expandBackupName } from '../config/backup-name.js';
import type { ServerConfig } from '../config/types.js';
import { renderBackupInfo, type ChecksumAlgorithm } from '../catalog/backup-info.js';
import { takeBasebackup } from '../backup/basebackup-engine.js';
import { takeFullBackup, type FullBackupOptions } from '../backup/full-backup.js';
import { checkIncremental, takeIncrementalBackup } from '../backup/incremental-backup.js';
import { defaultCompressionLevel, type CompressionMethod } from '../storage/compression.js';
import { BartError } from '../util/errors.js';
import { log } from '../util/log.js';
import { logPeakRss } from '../util/peak-rss.js';
import { phaseTimes } from '../util/phase-times.js';
import { selectOneServer, selectServers, type CommandContext } from './context.js';

/** BACKUP's options as commander parses them. */
export interface BackupCommandOptions {
  server?: string;
  format?: 'p' | 't';
  gzip?: boolean;
  compressLevel?: number;
  compress?: CompressionMethod;
  backupName?: string;
  threadCount?: number;
  checksumAlgorithm?: string;
  withPg_basebackup?: boolean;
  pg_basebackup?: boolean;
  parent?: string;
  check?: boolean;
  /** false with --no-verify-checksums. */
  verifyChecksums?: boolean;
}

/** Resolves the options that do not depend on the server. */
function resolveCommon(o: BackupCommandOptions): Omit<FullBackupOptions, 'threads' | 'name'> {
  let compression: CompressionMethod = o.compress ?? (o.gzip ? 'gzip' : 'none');
  if (o.gzip && o.compress && o.compress !== 'gzip')
    throw new BartError(`-z/--gzip conflicts with --compress ${o.compress}`);
  if (o.compressLevel !== undefined && compression === 'none') {
    if (o.compress === 'none')
      throw new BartError('-c/--compress-level needs a compression method (-z or --compress gzip|zstd)');
    compression = 'gzip'; // BART: a level implies gzip
  }
  if (o.compressLevel !== undefined && compression === 'lz4')
    throw new BartError('-c/--compress-level applies to gzip and zstd, not lz4');
  return {
    format: o.format === 'p' ? 'plain' : 'tar',
    compression,
    level: o.compressLevel ?? defaultCompressionLevel(compression),
    checksum: (o.checksumAlgorithm?.toUpperCase() ?? 'CRC32C') as ChecksumAlgorithm,
    verifyPages: o.verifyChecksums !== false,
  };
}

function backupName(o: BackupCommandOptions, server: ServerConfig, at: Date): string | undefined {
  const template = o.backupName ?? server.backupName;
  if (!template) return undefined;
  const problem = backupNameProblem(template);
  if (problem) throw new BartError(`--backup-name "${template}" is invalid: ${problem}`);
  const name = expandBackupName(template, at);
  const expandedProblem = backupNameProblem(name.replace(/%/g, '%%'));
  if (expandedProblem) throw new BartError(`backup name "${name}" (from "${template}") is invalid: ${expandedProblem}`);
  return name;
}

/** `bart BACKUP`: a full backup of one server or of all (`-s all`), each failure reported and counted. */
export async function backup(ctx: CommandContext, options: unknown): Promise<number> {
  const o = options as BackupCommandOptions;
  if (!o.server) throw new BartError('BACKUP needs -s/--server NAME|all');
  if (o.check && o.parent === undefined)
    throw new BartError('--check needs --parent ID|NAME (it checks what an incremental backup on that parent needs)');
  if (o.parent !== undefined) return incrementalBackup(ctx, o);
  if (o.withPg_basebackup && o.pg_basebackup === false)
    throw new BartError('--with-pg_basebackup and --no-pg_basebackup contradict each other');
  const common = resolveCommon(o);
  const servers = selectServers(ctx.config, o.server);
  let failures = 0;
  for (const server of servers) {
    phaseTimes.reset();
    try {
      const threads = o.threadCount ?? server.threadCount;
      const name = backupName(o, server, new Date());
      const request = { ...common, threads, ...(name ? { name } : {}) };
      const info = o.withPg_basebackup
        ? await takeBasebackup(ctx.config, server, request)
        : await takeFullBackup(ctx.config, server, request);
      log.info('backup completed successfully');
      log.debug(`BACKUP phases: ${phaseTimes.summary()}`);
      warnNotStartableInPlace(server, info.format);
      process.stdout.write('\n' + renderBackupInfo(info).replace(/\nPGBART DETAILS:[\s\S]*$/, '\n'));
    } catch (err) {
      if (!(err instanceof BartError) || servers.length === 1) throw err;
      log.error(`${err.message}`);
      failures++;
    }
  }
  logPeakRss('BACKUP');
  return failures > 0 ? 1 : 0;
}

/**
 * A plain-format backup in an encrypted repository is stored file by file encrypted: a DBA used to starting a
 * plain backup in place must learn it here, not during a disaster (issue 16).
 */
function warnNotStartableInPlace(server: ServerConfig, format: string): void {
  if (format !== 'plain' || server.repositoryCipher === 'none') return;
  log.info(
    `the repository of server ${server.name} is encrypted (${server.repositoryCipher}): this plain-format backup is not startable in place; restore it with bart RESTORE`,
  );
}

/** `BACKUP --parent P [--check]`: an incremental backup of one server (or only the check of what it needs). */
async function incrementalBackup(ctx: CommandContext, o: BackupCommandOptions): Promise<number> {
  if (o.server?.toLowerCase() === 'all')
    throw new BartError('--parent needs one server (-s NAME), not -s all: the parent belongs to one server');
  if (o.withPg_basebackup) throw new BartError('--with-pg_basebackup cannot take incremental backups (--parent)');
  if (o.checksumAlgorithm !== undefined)
    throw new BartError(
      '--checksum-algorithm applies to full backups: an incremental backup (--parent) checksums its files with the algorithm of its parent',
    );
  const server = selectOneServer(ctx.config, o.server, 'BACKUP --parent');
  if (o.check) {
    const r = await checkIncremental(ctx.config, server, o.parent!);
    log.info(
      `parent backup ${r.parent.info.id}: ${r.segments} WAL segments since its start, ${r.withMbm} scanned (MBM present), ${r.toScan.length} archived but not scanned yet, ${r.missingWal.length} missing`,
    );
    if (r.missingWal.length > 0) {
      throw new BartError(
        `WAL segment ${r.missingWal[0]} is missing from ${server.archivePath}: an incremental backup on parent ${r.parent.info.id} is impossible; take a new full backup`,
      );
    }
    if (r.toScan.length > 0)
      log.info(
        `the incremental backup will scan ${r.toScan.length} segment(s) first (from ${r.toScan[0]}); bart-scanner would have done it`,
      );
    log.info('check passed: an incremental backup can be taken');
    return 0;
  }
  if (server.xlogMethod === 'stream')
    throw new BartError(`server ${server.name}: xlog_method = stream is not supported yet; use xlog_method = fetch`);
  const common = resolveCommon(o);
  const name = backupName(o, server, new Date());
  const info = await takeIncrementalBackup(ctx.config, server, {
    ...common,
    threads: o.threadCount ?? server.threadCount,
    parent: o.parent!,
    ...(name ? { name } : {}),
  });
  log.info('backup completed successfully');
  log.debug(`BACKUP phases: ${phaseTimes.summary()}`);
  warnNotStartableInPlace(server, info.format);
  process.stdout.write('\n' + renderBackupInfo(info).replace(/\nPGBART DETAILS:[\s\S]*$/, '\n'));
  logPeakRss('BACKUP');
  return 0;
}
