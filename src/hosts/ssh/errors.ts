// SSH errors: OpenSSH failure output turned into one line saying what is wrong and what to fix.

import { currentUserName } from '../../util/os-user.js';

/** Where an ssh failure happened, for messages: who connects to whom. */
export interface SshFailureContext {
  /** `user@host` as given to ssh. */
  destination: string;
  /** The local OS user running ssh (the BART user); defaults to the current one. */
  localUser?: string;
}

/**
 * Turns what OpenSSH printed on a failure (exit status 255, or a spawn error) into one line that
 * says what is wrong and exactly what to fix. The patterns are OpenSSH's own messages; anything
 * unrecognized is passed on as it is, prefixed with the destination.
 */
export function explainSshFailure(stderr: string, ctx: SshFailureContext): string {
  const who = ctx.localUser ?? currentUserName();
  const dest = ctx.destination;
  const at = dest.includes('@') ? dest.slice(dest.indexOf('@') + 1) : dest;
  const remoteUser = dest.includes('@') ? dest.slice(0, dest.indexOf('@')) : 'the remote user';
  const text = stderr.replace(/\r/g, '').trim();
  const last =
    text
      .split('\n')
      .filter((l) => l.trim() !== '' && !/^Warning: Permanently added/.test(l))
      .pop() ?? '';
  if (/ENOENT|ssh: not found|No such file or directory.*ssh|spawn ssh/.test(text) && !/Permission denied/.test(text)) {
    return `ssh is not installed on this host (or not in PATH of "${who}"): install the OpenSSH client (Debian: apt-get install openssh-client)`;
  }
  if (/REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed/.test(text)) {
    return `the host key of ${at} changed since "${who}" last connected (ssh refuses it): if the change is expected, as "${who}" run ssh-keygen -R ${at} and connect once with ssh ${dest} to accept the new key`;
  }
  if (/Host key verification failed|No .* host key is known/.test(text)) {
    return `the host key of ${at} is unknown to "${who}": as "${who}" run ssh ${dest} once and accept the key (or add it with ssh-keyscan ${at} >> ~${who}/.ssh/known_hosts)`;
  }
  if (/Permission denied \(/.test(text) || /Too many authentication failures/.test(text)) {
    return `ssh key of "${who}" is not authorized for ${dest} (${last.trim()}): append "${who}"'s public key (~${who}/.ssh/id_*.pub; create one with ssh-keygen if missing) to ~${remoteUser}/.ssh/authorized_keys on ${at}, e.g. with ssh-copy-id ${dest}`;
  }
  if (/Could not resolve hostname/.test(text))
    return `host "${at}" cannot be resolved (${last.trim()}): fix the host name in bart.cfg or in ~${who}/.ssh/config`;
  if (/Connection refused/.test(text))
    return `no ssh server answers on ${at} (connection refused): start sshd there, or fix the host/port (Port in ~${who}/.ssh/config)`;
  if (/timed out|No route to host|Network is unreachable/.test(text))
    return `${at} is not reachable over ssh (${last.trim()}): check the network and firewalls`;
  if (
    /Connection closed|Connection reset|closed by remote host|Broken pipe|client_loop|kex_exchange_identification/.test(
      text,
    )
  ) {
    return `the ssh connection to ${dest} was closed (${last.trim()})`;
  }
  return `ssh to ${dest} failed${last ? `: ${last.trim()}` : ''}`;
}
