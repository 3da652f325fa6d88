// Configuration: which bart.cfg to read, -c, $BART_CONFIG, /etc/bart.cfg or $BART_HOME.

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BartError } from '../util/errors.js';

/**
 * Picks the bart.cfg to read: `-c/--config-path`, else `$BART_CONFIG`, else `/etc/bart.cfg`, else
 * `$BART_HOME/etc/bart.cfg`. An explicit path is used as given (its absence is reported when read).
 */
export function locateConfig(explicit: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  if (explicit) return explicit;
  if (env.BART_CONFIG) return env.BART_CONFIG;
  const tried = ['/etc/bart.cfg'];
  if (env.BART_HOME) tried.push(join(env.BART_HOME, 'etc', 'bart.cfg'));
  for (const candidate of tried) if (existsSync(candidate)) return candidate;
  const hint = env.BART_HOME ? '' : ' ($BART_HOME is not set)';
  throw new BartError(
    `no configuration file found: tried ${tried.join(', ')}${hint}; use -c/--config-path FILE or set $BART_CONFIG`,
  );
}
