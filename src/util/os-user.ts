// OS user: OS accounts looked up through NSS, the current user, root, and switching to the BART user.

import { execFileSync } from 'node:child_process';
import { userInfo } from 'node:os';
import { BartError } from './errors.js';

/** An OS account as the password database describes it. */
export interface OsUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

/** Looks an OS user up by name (through NSS, so LDAP users work too); undefined when unknown. */
export function lookupOsUser(name: string): OsUser | undefined {
  try {
    const line = execFileSync('getent', ['passwd', name], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
    const f = line.split(':');
    if (f.length < 7) return undefined;
    return { name: f[0]!, uid: Number(f[2]), gid: Number(f[3]), home: f[5]! };
  } catch {
    return undefined;
  }
}

/** Name of the user this process runs as. */
export function currentUserName(): string {
  return userInfo().username;
}

/** True when running as root. */
export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

/**
 * Makes this process run as `name`: supplementary groups, gid, then uid (in that order, since
 * dropping uid first would forbid the rest). HOME/USER follow so ssh and .pgpass find the user's files.
 */
export function switchToUser(name: string): void {
  const user = lookupOsUser(name);
  if (!user) throw new BartError(`the BART user "${name}" (from bart_host) does not exist on this host`);
  (process as unknown as { initgroups?: (u: string, g: number) => void }).initgroups?.(user.name, user.gid);
  process.setgid?.(user.gid);
  process.setuid?.(user.uid);
  process.env.HOME = user.home;
  process.env.USER = user.name;
  process.env.LOGNAME = user.name;
}
