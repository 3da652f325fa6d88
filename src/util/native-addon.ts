// Concept: loading one of pgbart's optional native addons (native/*.c, built by `npm run build` into native/build/).

import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** native/build/ from dist/src/util/, where scripts/build-native.sh puts the addons. */
const BUILD_DIR = new URL('../../../native/build/', import.meta.url);

/**
 * The exports of `native/build/<name>.node`, or undefined when it was not built (no C compiler or Node headers at
 * build time), does not load, or the environment variable `offSwitch` is `off` (the caller then takes its portable
 * path: same results, more CPU).
 */
export function loadNativeAddon(name: string, offSwitch: string): Record<string, unknown> | undefined {
  if (process.env[offSwitch] === 'off') return undefined;
  try {
    return createRequire(import.meta.url)(fileURLToPath(new URL(`${name}.node`, BUILD_DIR))) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}
