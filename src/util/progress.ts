// Progress: a progress bar on stderr when it is a terminal.

import { formatBytes } from './format.js';

/** A progress bar on a terminal (stderr); silent when stderr is not a TTY. */
export class Progress {
  private done = 0;
  private lastDraw = 0;
  private readonly started = Date.now();
  private readonly enabled: boolean;

  constructor(
    private readonly label: string,
    private total: number,
  ) {
    this.enabled = process.stderr.isTTY === true;
  }

  /** Adds bytes done and redraws at most every 200 ms. */
  add(bytes: number): void {
    this.done += bytes;
    if (!this.enabled) return;
    const now = Date.now();
    if (now - this.lastDraw < 200) return;
    this.lastDraw = now;
    this.draw(now);
  }

  private draw(now: number): void {
    const total = Math.max(this.total, this.done);
    const frac = total > 0 ? this.done / total : 1;
    const width = 30;
    const filled = Math.round(frac * width);
    const secs = Math.max(0.001, (now - this.started) / 1000);
    const rate = this.done / secs;
    const left = rate > 0 ? Math.max(0, (total - this.done) / rate) : 0;
    const bar = '#'.repeat(filled) + '-'.repeat(width - filled);
    process.stderr.write(
      `\r${this.label} [${bar}] ${(frac * 100).toFixed(0).padStart(3)}% ${formatBytes(this.done)} ${formatBytes(rate)}/s ${left.toFixed(0)}s left  `,
    );
  }

  /** Clears the bar. */
  end(): void {
    if (this.enabled) process.stderr.write('\r' + ' '.repeat(100) + '\r');
  }
}
