// Test harness: how big a randomized suite runs — a small fixed-seed slice in `npm test`, full size in `npm run test:long`.

/** True under `npm run test:long` (PGBART_TEST_LONG=1): randomized suites run at full size, with fresh seeds. */
export const LONG_RUN = process.env.PGBART_TEST_LONG === '1';

/** `slice` in `npm test`, `full` in `npm run test:long`. */
export function sized(slice: number, full: number): number {
  return LONG_RUN ? full : slice;
}

/**
 * The items an exhaustive loop runs: all of them in `npm run test:long`, only those `inSlice` keeps in
 * `npm test` (a fixed, representative slice: the caller keeps each distinct class at least once).
 */
export function sliced<T>(all: readonly T[], inSlice: (item: T, index: number) => boolean): T[] {
  return LONG_RUN ? [...all] : all.filter(inSlice);
}

/** True under `npm run test:e2e` (PGBART_TEST_E2E=1): the heavy end-to-end tests run as well. */
export const E2E_RUN = process.env.PGBART_TEST_E2E === '1';

/**
 * The `skip` option of a heavy end-to-end test whose behaviour other tests of `npm test` cover piece
 * by piece: it runs in `npm run test:e2e` , and `npm test` reports it skipped,
 * naming `why` it may wait (what covers it).
 */
export function e2eOnly(why: string): false | string {
  return E2E_RUN ? false : `heavy end-to-end test, runs in npm run test:e2e (${why})`;
}
