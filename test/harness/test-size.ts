// Test harness: how big a randomized suite runs — a small fixed-seed slice in `npm test`, full size in `npm run test:long`.

/** True under `npm run test:long` (PGBART_TEST_LONG=1): randomized suites run at full size, with fresh seeds. */
export const LONG_RUN = process.env.PGBART_TEST_LONG === '1';

/** `slice` in `npm test`, `full` in `npm run test:long`. */
export function sized(slice: number, full: number): number {
  return LONG_RUN ? full : slice;
}
