// Incremental backup: parent checks, block selection from the change set, and the incremental backup itself.

import { mkdir, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { BartConfig, ServerConfig } from '../config/types.js';
import type { HostEntry } from '../hosts/data-host.js';
import { checkedWalk } from '../hosts/checked-walk.js';
import { BackupSession } from '../postgres/backup-session.js';
import { connect, queryValue } from '../postgres/connection.js';
import { backupEntries } from '../postgres/data-directory.js';
import { forkKey } from '../scanner/modified-block-map.js';
import { archivedSegmentsOfRange, indexArchivedMbms, type ChangeSet } from '../scanner/change-set.js';
import { findArchivedSegment, readArchivedTimelineHistory } from '../scanner/archive-source.js';
import { openWalArchive } from '../storage/open-repository.js';
import { segmentName } from '../wal/segment-name.js';
import { timelineOfSegment } from '../wal/timeline-history.js';
import { BartError } from '../util/errors.js';
import { formatBytes } from '../util/format.js';
import { log } from '../util/log.js';
import { formatLsn, parseLsn } from '../util/lsn.js';
import type { ArchiveWriter } from './archive-writer.js';
import { addStopFiles, storeBackupWal } from './finish.js';
import type { BackupInfo } from '../catalog/backup-info.js';
import { runBackupTransaction, waitForArchivedWal, type BackupContext, type BackupRequest } from './transaction.js';
import { archiveNames, findBackup, listBackups, type CatalogEntry } from '../catalog/catalog.js';
import { BlockSourceHost } from './incremental-block-source.js';
import { chainProblem, readRestoredState, type RestoredState } from '../catalog/chain.js';
import { checkParentOnArchivedHistory, gatherChangeSet, type IncrementalRange } from './incremental-change-set.js';
import {
  fileKey,
  parseRelationPath,
  toRuns,
  type IncrementalFileInfo,
  type IncrementalManifestEntry,
} from '../catalog/incremental-format.js';
import { BLOCK_SIZE, FSM_FORKNUM, INIT_FORKNUM, RELSEG_BLOCKS, VISIBILITYMAP_FORKNUM } from '../postgres/constants.js';
import { PLAIN_BASE_DIR } from '../catalog/layout.js';
import type { ManifestFileEntry } from '../catalog/manifest.js';
import { pageCheckerFor, recordPageChecks, type PageChecker } from './page-check.js';
import { BackupOutputs, WriterCalls } from './engine-outputs.js';

/** How to take an incremental backup (validated by the command). */
export type IncrementalBackupOptions = Omit<BackupRequest, 'engine' | 'parent'> & {
  /** Identifier or name of the parent backup. */
  parent: string;
};

/** Most blocks held in memory per file being read, whatever batch_size says (its default is 384 MB). */
const MAX_BATCH_BLOCKS = 4096;

/** The parent checks that need no server connection; returns the parent's catalog entry. */
async function checkParent(config: BartConfig, server: ServerConfig, parentRef: string): Promise<CatalogEntry> {
  if (!server.allowIncrementalBackups) {
    throw new BartError(
      `server ${server.name} has allow_incremental_backups disabled; enable it in ${config.path} (and run bart-scanner) to take incremental backups`,
    );
  }
  const entries = await listBackups(config, server);
  const parent = findBackup(entries, server, parentRef);
  if (parent.info.status !== 'active' && parent.info.status !== 'keep') {
    throw new BartError(
      `parent backup "${parentRef}" of server ${server.name} is ${parent.info.status}; an incremental needs an active or keep parent`,
    );
  }
  const problem = chainProblem(entries, parent);
  if (problem) throw new BartError(`parent backup "${parentRef}" cannot be used: ${problem}`);
  return parent;
}

/** Which blocks of a file the incremental stores; undefined = the whole file. */
export function selectBlocks(
  archive: string,
  entry: HostEntry,
  parent: RestoredState,
  cs: ChangeSet,
): number[] | undefined {
  const rel = parseRelationPath(archive, entry.path);
  // Non-relation files are not block-tracked; the FSM is not fully WAL-logged; init forks are tiny.
  // Visibility-map bits are also cleared by heap records that carry no block reference to the VM
  // (XLH_*_ALL_VISIBLE_CLEARED: PostgreSQL's WAL summarizer marks those VM pages, our MBMs do not),
  // so the VM, 1/32768 of its heap, is copied whole too.
  if (!rel) return undefined;
  if (rel.fork === FSM_FORKNUM || rel.fork === VISIBILITYMAP_FORKNUM || rel.fork === INIT_FORKNUM) return undefined;
  const before = parent.files.get(fileKey(archive, entry.path));
  if (!before) return undefined; // new since the parent: there is nothing to start from
  if (entry.size % BLOCK_SIZE !== 0 || before.length % BLOCK_SIZE !== 0) return undefined;
  // Databases created (either strategy, or moved with SET TABLESPACE) or dropped and recreated under
  // the same OID, and new tablespaces: their files carry no usable history.
  const sameDb = (d: { spcOid: number; dbOid: number }) => d.spcOid === rel.spcOid && d.dbOid === rel.dbOid;
  if (
    cs.createdDatabases.some(sameDb) ||
    cs.droppedDatabases.some(sameDb) ||
    cs.createdTablespaces.includes(rel.spcOid)
  )
    return undefined;
  const nblocks = entry.size / BLOCK_SIZE;
  const base = rel.segment * RELSEG_BLOCKS;
  const f = cs.relations.get(forkKey(rel.spcOid, rel.dbOid, rel.relNumber, rel.fork));
  // Every block at or past `cut` is copied: past the fork's limit (created/truncated in the range)
  // or past the parent's length (the file grew).
  const limit = f && f.limit !== null ? Math.max(0, f.limit - base) : Number.MAX_SAFE_INTEGER;
  const cut = Math.min(limit, before.length / BLOCK_SIZE, nblocks);
  if (cut === 0) return nblocks === 0 ? [] : undefined;
  const blocks: number[] = [];
  if (f) {
    // f.blocks is ascending: find the first block of this segment file.
    let lo = 0;
    let hi = f.blocks.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (f.blocks[mid]! < base) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < f.blocks.length && f.blocks[i]! < base + cut; i++) blocks.push(f.blocks[i]! - base);
  }
  for (let b = cut; b < nblocks; b++) blocks.push(b);
  if (blocks.length === nblocks && nblocks > 0) return undefined;
  return blocks;
}

/** Counters for the summary line. */
interface Stats {
  whole: number;
  wholeBytes: number;
  partial: number;
  blocks: number;
  unchanged: number;
}

/** Copies a data directory or tablespace, each relation file as its changed blocks where it can. */
async function copyTreeIncremental(
  host: BlockSourceHost,
  root: string,
  archive: string,
  writer: ArchiveWriter,
  parallelism: number,
  decide: (archive: string, entry: HostEntry) => number[] | undefined,
  pending: Map<string, IncrementalFileInfo & { crcList: string[] }>,
  stats: Stats,
  checker: PageChecker | undefined,
): Promise<void> {
  const calls = new WriterCalls(parallelism);
  for await (const raw of backupEntries(checkedWalk(host, root), archive !== 'base')) {
    const entry: HostEntry = raw.type === 'symlink' && raw.path === 'pg_wal' ? { ...raw, type: 'dir', size: 0 } : raw;
    let add: Promise<void>;
    if (entry.type !== 'file') {
      add = writer.add(entry);
    } else {
      const blocks = decide(archive, entry);
      const path = join(root, entry.path);
      const target = checker?.target(archive, entry.path);
      if (blocks === undefined) {
        stats.whole++;
        stats.wholeBytes += entry.size;
        const pages = target ? { pages: { checker: checker!, target, host, path } } : {};
        add = writer.add(entry, { host, path, ...pages });
      } else {
        const runs = toRuns(blocks);
        const crcList: string[] = [];
        pending.set(fileKey(archive, entry.path), { length: entry.size, runs, crcs: '', crcList });
        // The block reader checks these blocks' pages: the writer sees them out of their order.
        host.select(path, { runs, crcs: crcList, ...(target ? { pages: { checker: checker!, target } } : {}) });
        if (blocks.length === 0) stats.unchanged++;
        else stats.partial++;
        stats.blocks += blocks.length;
        add = writer.add({ ...entry, size: blocks.length * BLOCK_SIZE }, { host, path });
      }
    }
    if (!(await calls.add(add))) break;
  }
  await calls.drain();
}

/** The timeline the server is on now (that of the checkpoint pg_backup_start just made). */
async function currentTimeline(ctx: BackupContext): Promise<number> {
  return Number(await queryValue(ctx.client, 'SELECT timeline_id FROM pg_control_checkpoint()'));
}

/**
 * Refuses an incremental when data checksums were enabled or disabled since the parent:
 * pg_checksums rewrites every page (or flips the control file) with the server stopped and writes
 * no WAL, so the MBMs cannot show those pages as changed and the chain would restore the parent's
 * pages under a control file that says otherwise (checksum failures, or worse).
 */
function checkDataChecksums(parent: BackupInfo, now: number): void {
  if (parent.dataChecksumVersion === undefined) {
    log.warning(
      `parent backup ${parent.id} does not record whether data checksums were on (taken by an older pgbart): if pg_checksums was run since, take a new full backup instead`,
    );
    return;
  }
  if (parent.dataChecksumVersion !== now) {
    const state = (v: number) => (v === 0 ? 'off' : `on (version ${v})`);
    throw new BartError(
      `data checksums were turned ${now === 0 ? 'off' : 'on'} since parent backup ${parent.id} (checksums ${state(parent.dataChecksumVersion)} then, ${state(now)} now): ` +
        'pg_checksums rewrites pages without WAL, so no incremental can capture it; take a new full backup',
    );
  }
}

/** The body of an incremental backup inside a backup transaction. */
async function incrementalBody(ctx: BackupContext, parent: CatalogEntry): Promise<BackupInfo> {
  const { config, server, request, client, facts, id, localDir, info } = ctx;
  const p = parent.info;
  if (facts.systemIdentifier !== p.systemIdentifier) {
    throw new BartError(
      `parent backup ${p.id} was taken of another cluster (system identifier ${p.systemIdentifier}, the server's is ${facts.systemIdentifier}); take a new full backup`,
    );
  }
  if (Math.floor(facts.versionNum / 10000) !== Math.floor(p.serverVersionNum / 10000)) {
    throw new BartError(
      `parent backup ${p.id} was taken of PostgreSQL ${Math.floor(p.serverVersionNum / 10000)}, the server now runs ${facts.major}; take a new full backup`,
    );
  }
  checkDataChecksums(p, facts.dataChecksumVersion);
  if (facts.walSegmentSize !== p.walSegmentSize)
    throw new BartError(
      `parent backup ${p.id} has WAL segments of ${p.walSegmentSize} bytes, the server ${facts.walSegmentSize}; take a new full backup`,
    );
  const parentState = await readRestoredState(parent.storage, parent.dataKey);

  let outputs: BackupOutputs | undefined;
  const blockHost = new BlockSourceHost(ctx.host, Math.max(1, Math.min(server.batchSize, MAX_BATCH_BLOCKS)));
  try {
    // No file-copy workers: relation files are read block by block through blockHost.
    outputs = await BackupOutputs.open(ctx, { parent: p.id });
    const { manifest } = outputs;
    const pending = new Map<string, IncrementalFileInfo & { crcList: string[] }>();
    let sinkChain: Promise<void> = Promise.resolve();
    const sinkFor = (archive: string) => (entry: ManifestFileEntry) => {
      const key = fileKey(archive, entry.path);
      const incr = entry.type === 'file' ? pending.get(key) : undefined;
      let out: IncrementalManifestEntry = entry;
      if (incr) {
        pending.delete(key);
        out = { ...entry, incr: { length: incr.length, runs: incr.runs, crcs: incr.crcList.join('') } };
      }
      sinkChain = sinkChain.then(() => manifest.addFile(out));
      return sinkChain;
    };
    const makeWriter = (archive: string) => outputs!.makeWriter(archive, sinkFor(archive));
    if (request.format === 'plain' && localDir !== undefined)
      await mkdir(join(localDir, PLAIN_BASE_DIR), { mode: 0o700 });

    const checker = pageCheckerFor(request.verifyPages !== false, facts.dataChecksumVersion, server.name);
    const { session, startLsn } = await BackupSession.start(
      client,
      facts.major,
      `pgbart incremental backup ${id} (parent ${p.id})`,
    );
    checker?.begin(parseLsn(startLsn));
    const timeline = await currentTimeline(ctx);
    await checkParentOnArchivedHistory(ctx.walArchive, p, timeline);
    // The segment holding our start LSN must reach the archive (and its MBM be made) now, not
    // whenever it fills up.
    await client.query('SELECT pg_switch_wal()');
    const range: IncrementalRange = {
      timeline,
      startLsn: parseLsn(p.startLsn),
      endLsn: parseLsn(startLsn),
      segmentSize: facts.walSegmentSize,
    };
    if (range.endLsn < range.startLsn)
      throw new BartError(`parent backup ${p.id} starts at ${p.startLsn}, after this backup's start ${startLsn}`);
    if (range.endLsn > range.startLsn) {
      const lastSeg = (range.endLsn - 1n) / BigInt(facts.walSegmentSize);
      const lastTli = timelineOfSegment(
        await readArchivedTimelineHistory(ctx.walArchive, timeline),
        lastSeg,
        facts.walSegmentSize,
      );
      await waitForArchivedWal(ctx.walArchive, segmentName(lastTli, lastSeg, facts.walSegmentSize), 60_000);
    }
    const cs = await gatherChangeSet(config, server, p, range);
    log.info(
      `changes since parent ${p.id} (${p.startLsn} to ${startLsn}): ${cs.relations.size} relation forks from ${cs.mbmFiles.length} MBM files`,
    );

    const stats: Stats = { whole: 0, wholeBytes: 0, partial: 0, blocks: 0, unchanged: 0 };
    const decide = (archive: string, entry: HostEntry) => selectBlocks(archive, entry, parentState, cs);
    const parallelism = request.format === 'plain' ? request.threads * 2 : 1;
    const base = await makeWriter('base');
    const copy = (root: string, archive: string, writer: ArchiveWriter) =>
      copyTreeIncremental(blockHost, root, archive, writer, parallelism, decide, pending, stats, checker);
    await copy(facts.dataDirectory, 'base', base);
    for (const ts of facts.tablespaces) {
      const writer = await makeWriter(String(ts.oid));
      await copy(ts.location, String(ts.oid), writer);
      // In place on a local file system (startable as BART's); on S3 the manifest holds the link.
      if (request.format === 'plain' && localDir !== undefined)
        await symlink(`../../${ts.oid}`, join(localDir, PLAIN_BASE_DIR, 'pg_tblspc', String(ts.oid)));
    }
    log.debug('incremental: data files copied');
    if (checker) recordPageChecks(checker, info);
    // pg_backup_stop(wait_for_archive) polls once a second; the WAL waits below poll every 25 ms.
    const stop = await session.stop(false);
    log.debug('incremental: backup mode ended');
    const label = await addStopFiles(base, stop);
    // As in a full backup, the WAL from start to stop makes this backup consistent on its own.
    const wal = await storeBackupWal(base, {
      archive: ctx.walArchive,
      label,
      stopLsn: stop.stopLsn,
      segmentSize: facts.walSegmentSize,
      timeoutMs: 60_000,
    });
    log.debug('incremental: WAL stored');
    const done = await outputs.finish({
      info,
      label,
      stopLsn: stop.stopLsn,
      wal,
      manifestLinesWritten: () => sinkChain,
    });
    log.info(
      `incremental backup: ${stats.blocks} blocks (${formatBytes(stats.blocks * BLOCK_SIZE)}) of ${stats.partial} changed relation files, ` +
        `${stats.whole} files whole (${formatBytes(stats.wholeBytes)}), ${stats.unchanged} relation files unchanged`,
    );
    return done;
  } catch (err) {
    await outputs?.abort();
    throw err;
  } finally {
    await outputs?.close();
  }
}

/**
 * Takes a block-level incremental backup of `server` on top of `opts.parent` (docs/catalog-format.md,
 * "Incremental backups"): same layout as a full backup, every file of the cluster listed, relation
 * files stored as the blocks changed since the parent's start LSN (from the MBMs), everything the
 * MBMs cannot vouch for stored whole.
 */
export async function takeIncrementalBackup(
  config: BartConfig,
  server: ServerConfig,
  opts: IncrementalBackupOptions,
): Promise<BackupInfo> {
  const parent = await checkParent(config, server, opts.parent);
  const { parent: _ref, ...rest } = opts;
  // A chain has one file-checksum algorithm: a restore verifies every file of the chain, unchanged ones with the
  // checksum an older link recorded, with the algorithm of the backup it restores (a full backup taken with
  // SHA256 before CRC32C became the default keeps SHA256 in its incrementals).
  const request = {
    ...rest,
    checksum: parent.info.checksumAlgorithm,
    engine: 'native' as const,
    parent: parent.info.id,
  };
  return runBackupTransaction(config, server, request, (ctx) => incrementalBody(ctx, parent));
}

/** What `BACKUP --parent P --check` found. */
export interface IncrementalCheck {
  parent: CatalogEntry;
  /** Segments of the range so far. */
  segments: number;
  /** Segments with an MBM. */
  withMbm: number;
  /** Segments whose WAL is archived but not scanned yet (the backup would scan them). */
  toScan: string[];
  /** Segments whose WAL is not in the archive: the backup would fail. */
  missingWal: string[];
}

/**
 * `BACKUP --parent P --check`: checks the parent and that every WAL segment from the parent's start
 * to the server's current position (the segments completed so far) is archived and scanned. Takes
 * no backup and changes nothing.
 */
export async function checkIncremental(
  config: BartConfig,
  server: ServerConfig,
  parentRef: string,
): Promise<IncrementalCheck> {
  const parent = await checkParent(config, server, parentRef);
  const client = await connect({
    host: server.host,
    port: server.port,
    user: server.user,
    applicationName: 'pgbart backup --check',
  });
  const walArchive = openWalArchive(config, server);
  try {
    const sysid = await queryValue(client, 'SELECT system_identifier::text FROM pg_control_system()');
    if (sysid !== parent.info.systemIdentifier)
      throw new BartError(
        `parent backup ${parent.info.id} was taken of another cluster (system identifier ${parent.info.systemIdentifier}, the server's is ${sysid})`,
      );
    checkDataChecksums(
      parent.info,
      Number(await queryValue(client, 'SELECT data_page_checksum_version FROM pg_control_init()')),
    );
    const timeline = Number(await queryValue(client, 'SELECT timeline_id FROM pg_control_checkpoint()'));
    await checkParentOnArchivedHistory(walArchive, parent.info, timeline);
    const segSize = parent.info.walSegmentSize;
    const current = parseLsn((await queryValue(client, 'SELECT pg_current_wal_lsn()::text'))!);
    // Only completed segments can be archived yet: the range ends where the current one begins.
    const end = (current / BigInt(segSize)) * BigInt(segSize);
    const range = { timeline, startLsn: parseLsn(parent.info.startLsn), endLsn: end, segmentSize: segSize };
    const index = await indexArchivedMbms(walArchive);
    const out: IncrementalCheck = { parent, segments: 0, withMbm: 0, toScan: [], missingWal: [] };
    const names = new Set(await archiveNames(walArchive));
    for (const seg of await archivedSegmentsOfRange(walArchive, range)) {
      out.segments++;
      if (index.has(`${seg.timeline}:${(seg.segNo + 1n) * BigInt(segSize)}`)) out.withMbm++;
      else if (await findArchivedSegment(walArchive, seg.name, names)) out.toScan.push(seg.name);
      else out.missingWal.push(seg.name);
    }
    log.debug(`--check range ${formatLsn(range.startLsn)}..${formatLsn(range.endLsn)}`);
    return out;
  } finally {
    await client.end().catch(() => undefined);
    await walArchive.close();
  }
}
