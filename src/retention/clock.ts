// Retention clock: the instant retention policies are measured from, fixed by PGBART_NOW in tests.

import { BartError } from '../util/errors.js';

/** Environment variable that fixes "now" for retention decisions. */
export const NOW_ENV = 'PGBART_NOW';

/**
 * The instant retention policies are measured from. Test hook: `PGBART_NOW=<ISO 8601 time>` makes
 * MANAGE and DELETE believe it is that time, so window policies can be tested without sleeping or
 * faking file dates. Nothing else reads it; production never sets it.
 */
export function retentionNow(env: NodeJS.ProcessEnv = process.env): Date {
  const text = env[NOW_ENV];
  if (text === undefined || text === '') return new Date();
  const now = new Date(text);
  if (Number.isNaN(now.getTime()))
    throw new BartError(
      `environment variable ${NOW_ENV}="${text}" is not an ISO 8601 time (e.g. 2026-01-31T12:00:00Z)`,
    );
  return now;
}
