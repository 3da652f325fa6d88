// Restore target choice: the target RESTORE writes to, local or ssh, opened or rebuilt from its spec.

import { LocalRestoreTarget } from './local/restore-target.js';
import { parseRemoteDestination, SshRestoreTarget } from './ssh/restore-target.js';
import type { RestoreTarget, RestoreTargetSpec } from './restore-target.js';

/**
 * The target RESTORE writes to: this host, or (-r/--remote-host `user@host`) another host over ssh,
 * connected once here. The caller closes it (`close?.()`) when the restore is over.
 */
export async function openRestoreTarget(remoteHost: string | undefined): Promise<RestoreTarget> {
  if (remoteHost === undefined) return new LocalRestoreTarget();
  return SshRestoreTarget.connect(parseRemoteDestination(remoteHost));
}

/** Rebuilds a target from its spec (in a worker thread). */
export function restoreTargetFromSpec(spec: RestoreTargetSpec): RestoreTarget {
  switch (spec.kind) {
    case 'local':
      return new LocalRestoreTarget(spec.owner);
    case 'ssh':
      return SshRestoreTarget.fromSpec(spec);
  }
}
