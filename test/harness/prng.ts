// Test harness: a small seedable PRNG (mulberry32) so randomized tests replay from their seed.

/**
 * A small, fast, seedable PRNG (mulberry32): the same seed replays the same sequence, so a failing
 * randomized test (chaos, crash loop, fuzzer) can be replayed from the seed it prints.
 */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
