// Archive command: the archive_command INIT sets and CHECK-CONFIG expects, template expanded.

import { spoolPaths } from '../archive/async-spool.js';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { openWalArchive } from '../storage/open-repository.js';
import { bartScriptPath } from '../util/bart-binary.js';
import { quoteForPostgresCommand, shellQuote } from '../util/shell-quote.js';

// Re-exported so that INIT and CHECK-CONFIG keep importing it from here; the one implementation is in util/.
export { bartScriptPath };

/** True when the server's WAL reaches the catalog without ssh: no remote_host, run by the BART user. */
export function archivesLocally(config: BartConfig, server: ServerConfig): boolean {
  return server.remoteHost === undefined && server.clusterOwner === config.global.bartHost.user;
}

/**
 * True when the server's WAL archive is not a directory on the BART host (an object store, an
 * encrypted repository): WAL can only go in through ARCHIVE-PUSH, never by copying a file into
 * archive_path (which then is not where the archive is).
 */
export function archiveNeedsPush(config: BartConfig, server: ServerConfig): boolean {
  const archive = openWalArchive(config, server);
  const local = archive.localPath('') !== undefined;
  void archive.close().catch(() => undefined);
  return !local;
}

/** The words that run this bart on the BART host for one server: `node bart.js -c bart.cfg <COMMAND> -s <server>`. */
function bartWords(config: BartConfig, server: ServerConfig, command: string): string[] {
  return [process.execPath, bartScriptPath(), '-c', config.path, command, '-s', server.name];
}

/**
 * archive_async = on, local server: a `sh` test before ARCHIVE-PUSH, so that a segment the archiver
 * already pushed from pg_wal is acknowledged without starting Node. It succeeds only when the done
 * marker (written after the push was durable, archive/async-spool.ts) is non-empty and equals the
 * identity of %p now (device, inode, size, mtime in ns: a file re-written or recycled under the name
 * differs); the marker is removed as the segment is acknowledged. Anything else runs ARCHIVE-PUSH,
 * which queues the segment durably. `%` of the stat format is doubled for PostgreSQL.
 */
function asyncFastPath(config: BartConfig, server: ServerConfig, push: string): string {
  const marker = `${quoteForPostgresCommand(spoolPaths(config, server).done)}/%f`;
  return (
    `m=${marker}; [ -s "$m" ] && [ "$(stat -c '%%d %%i %%s %%.9Y' %p 2>/dev/null)" = "$(cat "$m" 2>/dev/null)" ] ` +
    `&& rm -f "$m" || ${push}`
  );
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
 * else, when the archive is an object store (nothing to scp into), the segment streamed over ssh
 * to ARCHIVE-PUSH --stdin on the BART host (the database host needs only a shell and OpenSSH);
 * else BART's `scp %p bart_host:archive_path/%f`, since the server's OS user cannot run bart itself.
 */
export function expectedArchiveCommand(config: BartConfig, server: ServerConfig): string {
  if (server.archiveCommand !== undefined) return expandArchiveTemplate(server.archiveCommand, config, server);
  if (archivesLocally(config, server)) {
    const push = [...bartWords(config, server, 'ARCHIVE-PUSH').map(quoteForPostgresCommand), '%p'].join(' ');
    return server.archiveAsync ? asyncFastPath(config, server, push) : push;
  }
  if (archiveNeedsPush(config, server)) {
    // ssh hands its command to the BART user's shell: each word quoted for it, then the whole
    // quoted once more for the shell PostgreSQL runs. %f stays outside (24 hex digits, or a
    // .history/.backup/.partial name: nothing a shell interprets), so PostgreSQL expands it.
    const remote = [...bartWords(config, server, 'ARCHIVE-PUSH'), '--stdin'].map(shellQuote).join(' ');
    const bartHost = `${config.global.bartHost.user}@${config.global.bartHost.host}`;
    return `ssh -o BatchMode=yes ${quoteForPostgresCommand(bartHost)} ${quoteForPostgresCommand(remote)} %f < %p`;
  }
  return expandArchiveTemplate('scp %p %h:%a/%f', config, server);
}
