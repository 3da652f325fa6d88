// Backup page verification: page checksums of relation files checked while a backup reads them, and the report.

/**
 * Page checksum verification while backing up (as pg_basebackup and pgBackRest do): every page of
 * every relation file the backup reads is checked against its data checksum, when the cluster has
 * them. Failures are reported, not fatal: a WARNING per file, a count in backupinfo and
 * SHOW-BACKUPS. The checking itself happens where the bytes already pass (the archive writers, the
 * plain-format copy workers, the incremental block reader); this module decides which files are
 * checked and gathers what was found.
 */
import type { DataHost } from '../hosts/data-host.js';
import { describeBlocks, PageVerifier, rereadSuspects } from '../postgres/page-checksum.js';
import { parseRelationPath } from '../postgres/relation-file.js';
import { RELSEG_BLOCKS } from '../postgres/constants.js';
import { log } from '../util/log.js';
import type { BackupInfo } from '../catalog/backup-info.js';

/** Block numbers listed per file in a WARNING and in backupinfo; the count covers them all. */
export const MAX_LISTED_BLOCKS = 20;

/** A relation file whose pages are checked, as the writers receive it with its content. */
export interface PageCheckTarget {
  /** The file as reported: its path in the cluster (`base/5/16384`, `pg_tblspc/16385/PG_15_.../5/16390`). */
  name: string;
  /** Relation block number of the file's first page: segment number * RELSEG_SIZE. */
  firstBlock: number;
}

/** A file with pages that failed, for backupinfo and SHOW-BACKUPS. */
export interface CorruptFile {
  file: string;
  /** Failing block numbers within the file, at most {@link MAX_LISTED_BLOCKS}. */
  blocks: number[];
  /** How many blocks failed (may exceed `blocks.length`). */
  count: number;
}

/**
 * Verification state of one backup. Created before backup mode starts; {@link begin} gives it the
 * start LSN (pages at or past it are being written and WAL replay rewrites them: not checked).
 */
export class PageChecker {
  private start: bigint | undefined;
  private readonly corrupt: CorruptFile[] = [];
  /** Pages whose checksum was computed (new pages and pages changed since the start are not). */
  checkedPages = 0;

  /** Starts checking: `startLsn` is the backup's start. */
  begin(startLsn: bigint): void {
    this.start = startLsn;
  }

  /** The start LSN (0 before {@link begin}: nothing read before backup mode is checked). */
  get startLsn(): bigint {
    if (this.start === undefined) throw new Error('internal error: page verification before backup mode started');
    return this.start;
  }

  /**
   * Which file `path` (relative to the archive's root: the data directory for `base`, the
   * tablespace directory for a tablespace OID) is, if its pages carry checksums: relation files
   * only (main, fsm, vm and init forks; `pg_control`, `pg_filenode.map`, `PG_VERSION`,
   * `pg_internal.init` and temporary relations do not match and are not checked, as in
   * PostgreSQL's is_checksummed_file).
   */
  target(archive: string, path: string): PageCheckTarget | undefined {
    const rel = parseRelationPath(archive, path);
    if (!rel) return undefined;
    const name = archive === 'base' ? path : `pg_tblspc/${archive}/${path}`;
    return { name, firstBlock: rel.segment * RELSEG_BLOCKS };
  }

  /** A verifier for one file read front to back. */
  verifier(target: PageCheckTarget): PageVerifier {
    return new PageVerifier(target.firstBlock, this.startLsn);
  }

  /**
   * Re-reads once the pages `verifier` found bad (a page read while PostgreSQL wrote it can look
   * torn; read again it is whole, and its LSN then says it changed since the start), and reports
   * the ones that still fail. `host`/`path` is where the file is read again.
   */
  async settle(target: PageCheckTarget, verifier: PageVerifier, host: DataHost, path: string): Promise<void> {
    this.checkedPages += verifier.checked;
    this.report(target, await rereadSuspects(host, path, verifier));
  }

  /** Records what a copy worker found in one file (it read the failing pages again itself). */
  record(target: PageCheckTarget, checked: number, bad: number[]): void {
    this.checkedPages += checked;
    this.report(target, bad);
  }

  /** Records and reports the blocks of a file that failed after their second read. */
  report(target: PageCheckTarget, blocks: number[]): void {
    if (blocks.length === 0) return;
    const sorted = [...blocks].sort((a, b) => a - b);
    log.warning(
      `page verification failed in ${target.name}: ${describeBlocks(sorted, MAX_LISTED_BLOCKS)} (checksum mismatch)`,
    );
    this.corrupt.push({ file: target.name, blocks: sorted.slice(0, MAX_LISTED_BLOCKS), count: sorted.length });
  }

  /** Pages that failed, over the whole backup. */
  get corruptPages(): number {
    return this.corrupt.reduce((n, f) => n + f.count, 0);
  }

  /** The files with failing pages, in path order. */
  get corruptFiles(): CorruptFile[] {
    return [...this.corrupt].sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0));
  }

  /** The summary line for the log once the data files are copied. */
  summarize(): void {
    const bad = this.corruptPages;
    if (bad === 0) {
      log.info(`page checksums verified: ${this.checkedPages} pages, no errors`);
    } else {
      const files = this.corrupt.length;
      log.warning(
        `page checksums: ${bad} of ${this.checkedPages} pages failed verification ` +
          `in ${files} file${files === 1 ? '' : 's'}; ` +
          'the backup is complete, but those pages are corrupt on the server (see bart SHOW-BACKUPS -t)',
      );
    }
  }
}

/**
 * The page checker of a backup request: undefined (and an INFO line saying why) when pages are not
 * verified because the cluster has no data checksums; undefined silently with --no-verify-checksums.
 */
export function pageCheckerFor(verify: boolean, dataChecksumVersion: number, server: string): PageChecker | undefined {
  if (!verify) return undefined;
  if (dataChecksumVersion === 0) {
    log.info(
      `server ${server} has no data checksums (initdb --data-checksums / pg_checksums --enable): ` +
        'pages are not verified',
    );
    return undefined;
  }
  return new PageChecker();
}

/** Logs the page verification's summary and records its result in the backupinfo being completed. */
export function recordPageChecks(checker: PageChecker, info: BackupInfo): void {
  checker.summarize();
  info.pageChecksumErrors = checker.corruptPages;
  if (checker.corruptPages > 0) info.pageChecksumErrorFiles = checker.corruptFiles;
}
