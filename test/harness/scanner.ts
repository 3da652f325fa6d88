// Test harness: bart-scanner run as the CLI, its pid found, and a left-over scanner killed.

/** Helpers for the scanner tests: run bart-scanner as the CLI, find its pid, stop it for sure. */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './pg-binaries.js';
import { run, type RunResult } from './os.js';

/** Runs `bart-scanner -c <config> ...args` as root (it switches to the bart user itself). */
export function bartScanner(configPath: string, args: string[]): Promise<RunResult> {
  return run(process.execPath, [join(REPO_ROOT, 'bin', 'bart-scanner.js'), '-c', configPath, ...args], {
    asTestUser: false,
  });
}

/** Pid from the scanner's pid file in `socketDir`, if the process lives. */
export function scannerPid(socketDir: string): number | undefined {
  const f = join(socketDir, 'bart_scanner.pid');
  if (!existsSync(f)) return undefined;
  const pid = Number(readFileSync(f, 'utf8').trim());
  try {
    process.kill(pid, 0);
    return pid;
  } catch {
    return undefined;
  }
}

/** Kills a scanner left running by a failed test. */
export function killScanner(socketDir: string): void {
  const pid = scannerPid(socketDir);
  if (pid !== undefined) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}
