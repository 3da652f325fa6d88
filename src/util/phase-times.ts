// Phase times: where a command's time goes (reads, checksums, compression, writes, fsync, WAL waits), for `-d`.

/**
 * Accumulated time per named phase of one command. Phases overlap (reading runs while workers compress), so the
 * sum is not the wall time: each figure says how long the main thread worked or waited on one thing, or, for a
 * `workers` phase, the busy time summed over the worker threads. Printed as one debug line at the end of BACKUP
 * and RESTORE, and recorded by the benchmark, so a speed change is measured rather than guessed.
 */
export class PhaseTimes {
  private readonly totals = new Map<string, { ms: number; count: number }>();
  private started = performance.now();

  /** Starts over (the next server of `BACKUP -s all`). */
  reset(): void {
    this.totals.clear();
    this.started = performance.now();
  }

  /** Adds `ms` to a phase. */
  add(phase: string, ms: number): void {
    const t = this.totals.get(phase);
    if (t) {
      t.ms += ms;
      t.count++;
    } else this.totals.set(phase, { ms, count: 1 });
  }

  /** Runs a synchronous step, its time counted under `phase`. */
  sync<T>(phase: string, step: () => T): T {
    const t0 = performance.now();
    try {
      return step();
    } finally {
      this.add(phase, performance.now() - t0);
    }
  }

  /** Awaits an asynchronous step, the wait counted under `phase`. */
  async wait<T>(phase: string, step: Promise<T> | (() => Promise<T>)): Promise<T> {
    const t0 = performance.now();
    try {
      return await (typeof step === 'function' ? step() : step);
    } finally {
      this.add(phase, performance.now() - t0);
    }
  }

  /** Milliseconds recorded for a phase (0 when none). */
  ms(phase: string): number {
    return this.totals.get(phase)?.ms ?? 0;
  }

  /** `phase 1.23 s, …; wall 4.56 s`, phases in the order first recorded. */
  summary(): string {
    const parts = [...this.totals].map(([phase, t]) => `${phase} ${(t.ms / 1000).toFixed(2)} s`);
    return `${parts.join(', ')}; wall ${((performance.now() - this.started) / 1000).toFixed(2)} s`;
  }

  /** The phases as seconds, for JSON (benchmark results). */
  toJSON(): Record<string, number> {
    return Object.fromEntries([...this.totals].map(([phase, t]) => [phase, Math.round(t.ms) / 1000]));
  }
}

/**
 * The phase times of the command running in this process (one command per process). Engines record into it
 * without threading a timer through every call; the command prints it.
 */
export const phaseTimes = new PhaseTimes();
