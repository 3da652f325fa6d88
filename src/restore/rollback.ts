// Restore phase: cleanup on failure, so a failed or interrupted restore leaves every root as it was.

import { join, relative, sep } from 'node:path';
import type { RestoreTarget } from '../hosts/restore-target.js';
import { BartError, errorMessage } from '../util/errors.js';
import { log } from '../util/log.js';
import type { RestoreRoot } from './tablespaces.js';

/** Left in PATH while a restore is being written; its presence means "interrupted, do not use". */
export const INCOMPLETE_MARKER = '.pgbart-restore-incomplete';
/** PG_VERSION is written under this name until the end, so a half-restored directory never starts. */
export const PG_VERSION_PENDING = 'PG_VERSION.pgbart-incomplete';

/** Remembers what RESTORE created so that a failure leaves every root as it was. */
export class RestoreTransaction {
  private readonly undo: (() => Promise<void>)[] = [];

  constructor(private readonly target: RestoreTarget) {}

  /** Creates an absent root (remembering the topmost directory created) or claims an empty one. */
  async claim(root: RestoreRoot): Promise<void> {
    const s = root.state;
    if (s.kind === 'absent') {
      const first = join(s.existingParent, relative(s.existingParent, root.path).split(sep)[0]!);
      this.undo.push(() => this.target.remove(first));
      await this.target.makeDir(root.path, 0o700);
    } else if (s.kind === 'empty') {
      this.undo.push(async () => {
        await this.target.emptyDir(root.path);
        await this.target.chmod(root.path, s.mode);
      });
    }
    await this.target.chmod(root.path, 0o700);
  }

  /** Puts every root back as it was (best effort, reporting what could not be undone); false when something remains. */
  async rollback(): Promise<boolean> {
    let clean = true;
    for (const step of this.undo.reverse()) {
      try {
        await step();
      } catch (err) {
        clean = false;
        log.warning(`could not remove what the failed restore wrote: ${errorMessage(err)}`);
      }
    }
    return clean;
  }
}

/**
 * The error RESTORE ends with after a rollback: why it failed (or that it was interrupted, exit 130)
 * and what is left: nothing, or a data directory that cannot be started.
 */
export function restoreFailure(
  err: unknown,
  interrupted: boolean,
  clean: boolean,
  target: RestoreTarget,
  path: string,
  roots: RestoreRoot[],
): BartError {
  const why = interrupted ? 'RESTORE was interrupted' : errorMessage(err);
  // A target we could not clean (e.g. the ssh connection to it is gone) still holds the marker and
  // no PG_VERSION, so PostgreSQL refuses to start it.
  const where = target.spec.kind === 'local' ? 'this host' : target.description;
  const left = clean
    ? `nothing was left in ${roots.map((r) => `"${r.path}"`).join(', ')}`
    : `"${path}" on ${where} could not be cleaned up: it holds an incomplete restore ` +
      `(${INCOMPLETE_MARKER}, no PG_VERSION) that will not start; remove it`;
  return new BartError(`${why}; ${left}`, interrupted ? 130 : 1);
}
