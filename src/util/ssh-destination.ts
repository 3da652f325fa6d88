// SSH destination: why a user@host is unsafe on an ssh or scp command line (a leading "-").

/**
 * Why a `user@host` given by the user (RESTORE -r, bart.cfg's remote_host and bart_host) is unsafe
 * on an ssh or scp command line, or undefined. A user or host starting with "-" would be read as an
 * option (`-oProxyCommand=...` runs a command); pgbart also puts "--" before every destination, but
 * refuses such values up front so the message says what is wrong.
 */
export function sshDestinationProblem(text: string): string | undefined {
  const host = text.slice(text.lastIndexOf('@') + 1);
  if (text.startsWith('-') || host.startsWith('-')) {
    return 'the user and the host must not start with "-" (ssh would read it as an option)';
  }
  return undefined;
}
