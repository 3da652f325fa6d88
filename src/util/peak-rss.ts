// Peak memory: the process's peak resident memory logged for the benchmarks.

import { log } from './log.js';

/** Logs the process's peak resident memory (all threads) to the logfile; benchmarks read it. */
export function logPeakRss(what: string): void {
  const kb = process.resourceUsage().maxRSS;
  log.fileOnly('INFO', `${what}: peak RSS ${(kb / 1024).toFixed(1)} MB`);
}
