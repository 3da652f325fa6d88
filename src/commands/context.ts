// Command context: what every command receives, and -s NAME|all resolved to servers.

import type { BartConfig, ServerConfig } from '../config/types.js';
import { BartError } from '../util/errors.js';

/** What every command receives: the validated configuration and global flags. */
export interface CommandContext {
  config: BartConfig;
  debug: boolean;
}

/**
 * Resolves `-s NAME|all` to servers. No name means all servers (for the commands that allow it);
 * names are case-insensitive.
 */
export function selectServers(config: BartConfig, name: string | undefined): ServerConfig[] {
  if (name === undefined || name.toLowerCase() === 'all') {
    if (config.servers.length === 0) throw new BartError(`${config.path}: no server sections are defined`);
    return config.servers;
  }
  const server = config.servers.find((s) => s.name === name.toLowerCase());
  if (!server) {
    const known = config.servers.map((s) => s.sectionName).join(', ') || 'none';
    throw new BartError(`server "${name}" is not defined in ${config.path} (servers defined: ${known})`);
  }
  return [server];
}

/** Like {@link selectServers} for commands that need exactly one named server. */
export function selectOneServer(config: BartConfig, name: string | undefined, command: string): ServerConfig {
  if (!name) throw new BartError(`${command} needs -s/--server NAME`);
  if (name.toLowerCase() === 'all')
    throw new BartError(`${command} works on one server at a time; -s all is not allowed`);
  return selectServers(config, name)[0]!;
}
