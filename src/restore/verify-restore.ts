// VERIFY-RESTORE: a backup proven by restoring it into a scratch directory, starting it and checking it.
import { rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CatalogEntry } from '../catalog/catalog.js';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { LocalRestoreTarget } from '../hosts/local/restore-target.js';
import {
  checkDatabases,
  checkPageChecksums,
  freeLocalPort,
  ScratchCluster,
  type ChecksumCheck,
  type LogicalCheck,
} from '../postgres/scratch-cluster.js';
import { queryValue } from '../postgres/connection.js';
import { findServerBinaries, type ServerBinaries } from '../postgres/server-binaries.js';
import { BartError, errorMessage } from '../util/errors.js';
import { configureLog, log } from '../util/log.js';
import { currentUserName, isRoot } from '../util/os-user.js';
import { runRestore } from './restore.js';

/** The verdict on one backup. */
export interface VerifyRestoreResult {
  id: string;
  name?: string;
  ok: boolean;
  /** Why it failed: the phase (restore, start, amcheck, table scan, checksums) and what it said. */
  reason?: string;
  /** More problems than the reason names (amcheck's first lines, the files with failing pages). */
  problems: string[];
  seconds: number;
  startedAt: Date;
  finishedAt: Date;
  /** The logical check of the started cluster, when it got that far. */
  databases?: LogicalCheck;
  /** The page checksum check, when it got that far; absent with data checksums off. */
  checksums?: ChecksumCheck;
  /** data_checksums of the restored cluster, once started. */
  dataChecksums?: boolean;
  /** Where the server binaries came from. */
  binaries: string;
  /** `amcheck: 5 databases, checksums: 1,234 files` (what the verdict line shows in parentheses). */
  details: string;
}

/** How VERIFY-RESTORE runs. */
export interface VerifyRestoreOptions {
  /** Restore workers (and pg_amcheck jobs). */
  workers: number;
  /** True when the console shows INFO lines (text output); restore's own progress goes to the logfile only. */
  consoleInfo: boolean;
}

/** The checks after the start, as far as they got. */
interface Progress {
  databases?: LogicalCheck;
  checksums?: ChecksumCheck;
  dataChecksums?: boolean;
}

/** A phase's failure: it names the phase, so the verdict says where the backup failed. */
class PhaseFailure extends Error {}

async function phase<T>(name: string, signal: AbortSignal, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (signal.aborted) throw err;
    throw new PhaseFailure(`${name}: ${errorMessage(err)}`);
  }
}

function detailsOf(p: Progress): string {
  const parts: string[] = [];
  if (p.databases) parts.push(p.databases.summary);
  if (p.dataChecksums === false) parts.push('checksums: off in this cluster');
  else if (p.checksums) {
    const { files, pages } = p.checksums;
    parts.push(`checksums: ${files.toLocaleString('en-US')} files, ${pages.toLocaleString('en-US')} pages`);
  }
  return parts.join(', ');
}

/**
 * Restores one backup (through its chain) into a fresh scratch directory under the temp directory
 * ($TMPDIR), starts it on a free port with recovery to the backup's end, checks it, and removes
 * everything again, also on failure and at process exit. A damaged backup is a FAILED result, not an
 * error; an interruption (`signal`) is an error after the cleanup.
 */
async function verifyOne(
  config: BartConfig,
  server: ServerConfig,
  entry: CatalogEntry,
  bins: ServerBinaries,
  opts: VerifyRestoreOptions,
  signal: AbortSignal,
): Promise<VerifyRestoreResult> {
  const startedAt = new Date();
  const info = entry.info;
  const port = await freeLocalPort();
  let scratch: string;
  try {
    scratch = await mkdtemp(join(tmpdir(), 'pgbart-verify-'));
  } catch (err) {
    throw new BartError(`cannot create a scratch directory in ${tmpdir()} (set TMPDIR): ${errorMessage(err)}`);
  }
  const dataDir = join(scratch, 'data');
  const cluster = new ScratchCluster({ bins, dataDir, privateDir: scratch, port, user: server.user });
  // Last resort if the process ends without reaching cleanUp (the restored data must not stay behind).
  const atExit = () => {
    cluster.stopSync();
    rmSync(scratch, { recursive: true, force: true });
  };
  process.on('exit', atExit);
  const progress: Progress = {};
  let failure: string | undefined;
  let problems: string[] = [];
  try {
    log.fileOnly('INFO', `VERIFY-RESTORE of backup ${info.id}: scratch directory ${scratch}, port ${port}`);
    await phase('restore', signal, async () => {
      // Tablespaces go under the scratch directory too, never to their original locations.
      const tablespaceMap = new Map(info.tablespaces.map((t) => [t.oid, join(scratch, 'tablespaces', String(t.oid))]));
      // The scratch cluster is run by us, the BART user, whoever cluster_owner is.
      const asUs = { ...server, clusterOwner: currentUserName() };
      const request = {
        server: asUs,
        path: dataDir,
        backupId: info.id,
        tablespaceMap,
        targetOptions: { targetImmediate: true, targetAction: 'promote' },
        workers: opts.workers,
        copyWals: false,
        disableChecksum: false,
        standby: false,
        delta: false,
      };
      // RESTORE's progress and "how to start it" lines would mislead here: the logfile gets them.
      if (opts.consoleInfo) configureLog({ quiet: true });
      try {
        await runRestore(config, request, new LocalRestoreTarget());
      } finally {
        if (opts.consoleInfo) configureLog({ quiet: false });
      }
    });
    signal.throwIfAborted();
    await phase('start', signal, () => cluster.start(signal));
    const checksumsOn = async () =>
      cluster.withClient('postgres', async (c) => (await queryValue(c, 'SHOW data_checksums')) === 'on');
    progress.dataChecksums = await phase('start', signal, checksumsOn);
    const checked = await phase('amcheck', signal, () => checkDatabases(cluster, opts.workers, signal));
    progress.databases = checked;
    if (!checked.ok) {
      failure = `${checked.summary.split(':')[0]} found problems: ${checked.problems[0] ?? 'see the logfile'}`;
      problems = checked.problems;
    }
    await phase('stop', signal, () => cluster.stop());
    if (progress.dataChecksums) {
      const sums = await phase('checksums', signal, () => checkPageChecksums(dataDir, signal));
      progress.checksums = sums;
      if (!sums.ok && failure === undefined) {
        const pages = `${sums.failedPages} page${sums.failedPages === 1 ? '' : 's'} failed`;
        failure = `page checksums: ${pages}, ${sums.problems[0] ?? ''}`;
        problems = sums.problems;
      }
    }
  } catch (err) {
    if (!(err instanceof PhaseFailure) || signal.aborted) {
      await cleanUp(cluster, scratch, atExit);
      if (signal.aborted) {
        const what = `the scratch cluster was stopped and ${scratch} removed`;
        throw new BartError(`VERIFY-RESTORE was interrupted; ${what}`, 130);
      }
      throw err;
    }
    failure = err.message;
  }
  await cleanUp(cluster, scratch, atExit);
  const finishedAt = new Date();
  return {
    id: info.id,
    ...(info.name ? { name: info.name } : {}),
    ok: failure === undefined,
    ...(failure !== undefined ? { reason: failure } : {}),
    problems,
    seconds: (finishedAt.getTime() - startedAt.getTime()) / 1000,
    startedAt,
    finishedAt,
    ...progress,
    binaries: bins.source,
    details: detailsOf(progress),
  };
}

/** Stops the scratch server and removes the scratch directory; a failure to do so is an error naming it. */
async function cleanUp(cluster: ScratchCluster, scratch: string, atExit: () => void): Promise<void> {
  try {
    await cluster.stop();
    await rm(scratch, { recursive: true, force: true });
  } catch (err) {
    throw new BartError(`could not remove the scratch cluster in ${scratch}: ${errorMessage(err)}; remove it by hand`);
  } finally {
    process.removeListener('exit', atExit);
  }
}

/**
 * VERIFY-RESTORE of `entries`, one after the other, each reported to `onResult` as it ends. The
 * server binaries of each backup's major version are found first (a clear error naming what is
 * missing). SIGINT/SIGTERM stop the scratch server, remove the scratch directory and end with an
 * error (exit 130).
 */
export async function verifyRestores(
  config: BartConfig,
  server: ServerConfig,
  entries: CatalogEntry[],
  opts: VerifyRestoreOptions,
  onResult: (result: VerifyRestoreResult) => Promise<void>,
): Promise<void> {
  if (isRoot()) {
    throw new BartError(
      `PostgreSQL refuses to run as root, and VERIFY-RESTORE runs the restored server as the BART user: ` +
        `bart_host in ${config.path} names root; make it a non-root user (e.g. postgres)`,
    );
  }
  const binaries = new Map<number, ServerBinaries>();
  for (const e of entries) {
    const major = Math.floor(e.info.serverVersionNum / 10000);
    if (!binaries.has(major)) binaries.set(major, findServerBinaries(server, major));
  }
  const controller = new AbortController();
  const onSignal = () => controller.abort();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    for (const entry of entries) {
      const bins = binaries.get(Math.floor(entry.info.serverVersionNum / 10000))!;
      await onResult(await verifyOne(config, server, entry, bins, opts, controller.signal));
    }
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  }
}
