// PostgreSQL constants: block and relation segment sizes, fork numbers and WAL segment size limits.

/**
 * Compile-time constants of PostgreSQL that pgbart relies on (pg_config.h, common/relpath.h,
 * access/xlog_internal.h). pgbart supports the default build's block sizes only; WAL record-format
 * constants are in wal/constants.ts.
 */

/** BLCKSZ: the relation block (page) size. */
export const BLOCK_SIZE = 8192;
/** RELSEG_SIZE in blocks (1 GB segment files): block N lives in `<relfilenode>.<N / RELSEG_BLOCKS>`. */
export const RELSEG_BLOCKS = 131072;
/** SizeOfPageHeaderData: the fixed part of every page's header. */
export const PAGE_HEADER_SIZE = 24;

/** Relation fork numbers (ForkNumber) and their names in file names (`_fsm`, `_vm`, `_init`). */
export const FORK_NAMES: readonly string[] = ['main', 'fsm', 'vm', 'init'];
export const MAIN_FORKNUM = 0;
export const FSM_FORKNUM = 1;
export const VISIBILITYMAP_FORKNUM = 2;
export const INIT_FORKNUM = 3;
export const MAX_FORKNUM = 3;

/** The default WAL segment size (16 MB); clusters may use other powers of two (initdb --wal-segsize). */
export const DEFAULT_WAL_SEGMENT_SIZE = 16 * 1024 * 1024;
/** WalSegMinSize: the smallest WAL segment size initdb allows (1 MB). */
export const MIN_WAL_SEGMENT_SIZE = 1024 * 1024;
/** WalSegMaxSize: the largest WAL segment size initdb allows (1 GB). */
export const MAX_WAL_SEGMENT_SIZE = 1024 * 1024 * 1024;

/** True for a WAL segment size PostgreSQL accepts: a power of two from 1 MB to 1 GB (IsValidWalSegSize). */
export function isValidWalSegmentSize(size: number): boolean {
  return size >= MIN_WAL_SEGMENT_SIZE && size <= MAX_WAL_SEGMENT_SIZE && (size & (size - 1)) === 0;
}
