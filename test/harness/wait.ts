// Test harness: waitFor, polling a probe until it holds or the timeout expires.

/** What a probe returns while the condition does not hold yet. */
export type NotYet = false | null | undefined;

/** How long and how often {@link waitFor} polls. */
export interface WaitOptions {
  /** Give up after this many milliseconds (default 60 s: generous, as tests share a slow machine). */
  timeoutMs?: number;
  /** Pause between probes in milliseconds (default 100). */
  intervalMs?: number;
  /** Extra context for the timeout error (e.g. a server log tail), computed only on timeout. */
  details?: () => string;
}

/**
 * Polls `probe` until it returns something other than `false`, `null` or `undefined`, and returns
 * that value: a predicate (`() => existsSync(f)`) resolves to `true`, a lookup
 * (`() => names.find(...)`) to what it found. The probe may be sync or async; an exception from it
 * fails the wait at once (a broken probe should not look like a slow condition). The probe runs at
 * least once, and once more after the deadline, so a slow probe cannot make the wait fail early.
 * On timeout throws an Error naming `what` and the time waited.
 */
export async function waitFor<T>(
  what: string,
  probe: () => T | NotYet | Promise<T | NotYet>,
  options: WaitOptions = {},
): Promise<Exclude<T, NotYet>> {
  const timeoutMs = options.timeoutMs ?? 60_000;
  const intervalMs = options.intervalMs ?? 100;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pastDeadline = Date.now() >= deadline;
    const value = await probe();
    if (value !== false && value !== null && value !== undefined) return value as Exclude<T, NotYet>;
    if (pastDeadline) {
      const details = options.details?.();
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${details ? `\n${details}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, Math.max(0, Math.min(intervalMs, deadline - Date.now()))));
  }
}
