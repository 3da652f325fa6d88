// Bart binary: where this installation's bin/bart.js is, for commands PostgreSQL runs.

import { fileURLToPath } from 'node:url';

/**
 * Absolute path of this installation's `bin/bart.js` (found from this module, not from argv, which
 * may be a symlink or another script). Compiled, this module is `dist/src/util/bart-binary.js`, so
 * the installation's root is three levels up. The file may be missing (a broken install): callers
 * that need it check.
 */
export function bartScriptPath(): string {
  return fileURLToPath(new URL('../../../bin/bart.js', import.meta.url));
}
