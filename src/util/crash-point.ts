// Crash point: the PGBART_CRASH_AT test hook that kills the process with SIGKILL at a named point.

/** Environment variable naming the crash point to die at (test hook). */
export const CRASH_ENV = 'PGBART_CRASH_AT';

/**
 * Test hook for crash-safety tests: when `PGBART_CRASH_AT` equals `point` (or lists it among
 * comma-separated names), the process kills itself with SIGKILL right here, as a power cut or an
 * OOM kill would: no cleanup handler, no finally block runs. Unset in production, where this is a
 * single string comparison.
 */
export function crashPoint(point: string): void {
  const wanted = process.env[CRASH_ENV];
  if (wanted === undefined || wanted === '') return;
  if (wanted === point || wanted.split(',').includes(point)) process.kill(process.pid, 'SIGKILL');
}
