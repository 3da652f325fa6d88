// Archive command: the archive_command INIT sets and CHECK-CONFIG expects, template expanded.

import type { BartConfig, ServerConfig } from '../config/types.js';
import { bartScriptPath } from '../util/bart-binary.js';
import { quoteForPostgresCommand } from '../util/shell-quote.js';

// Re-exported so that INIT and CHECK-CONFIG keep importing it from here; the one implementation is in util/.
export { bartScriptPath };

/** True when the server's WAL reaches the catalog without ssh: no remote_host, run by the BART user. */
export function archivesLocally(config: BartConfig, server: ServerConfig): boolean {
  return server.remoteHost === undefined && server.clusterOwner === config.global.bartHost.user;
}

/**
 * Expands BART's archive_command template: `%h` = bart_host (user@host), `%a` = the server's archive
 * path; `%p`, `%f`, `%r` and `%%` are left for PostgreSQL. Both are shell-quoted (and `%` doubled)
 * when they hold anything the shell would interpret, since PostgreSQL runs the command with /bin/sh:
 * an archive path with a space or a quote would otherwise split or break the command. Plain values,
 * the usual case, come out unchanged, so templates that worked before produce the same command.
 */
export function expandArchiveTemplate(template: string, config: BartConfig, server: ServerConfig): string {
  const bartHost = `${config.global.bartHost.user}@${config.global.bartHost.host}`;
  return template.replace(/%(.)/g, (whole, c: string) => {
    if (c === 'h') return quoteForPostgresCommand(bartHost);
    if (c === 'a') return quoteForPostgresCommand(server.archivePath);
    return whole;
  });
}

/**
 * The archive_command INIT writes: the server section's template when set; else, for a local server
 * run by the BART user, this bart's ARCHIVE-PUSH (atomic, idempotent, nothing else to install);
 * else BART's `scp %p bart_host:archive_path/%f`, since the server's OS user cannot run bart itself.
 */
export function expectedArchiveCommand(config: BartConfig, server: ServerConfig): string {
  if (server.archiveCommand !== undefined) return expandArchiveTemplate(server.archiveCommand, config, server);
  if (archivesLocally(config, server)) {
    return [
      quoteForPostgresCommand(process.execPath),
      quoteForPostgresCommand(bartScriptPath()),
      '-c',
      quoteForPostgresCommand(config.path),
      'ARCHIVE-PUSH',
      '-s',
      quoteForPostgresCommand(server.name),
      '%p',
    ].join(' ');
  }
  return expandArchiveTemplate('scp %p %h:%a/%f', config, server);
}
