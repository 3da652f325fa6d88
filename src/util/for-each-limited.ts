// Concept: bounded concurrency — a list worked through with at most N calls in flight.

/** Runs `fn` over `items` with at most `limit` calls in flight (in list order of start). */
export async function forEachLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
}
