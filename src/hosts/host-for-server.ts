import type { ServerConfig } from '../config/types.js';
import { BartError } from '../util/errors.js';
import type { DataHost } from './data-host.js';
import { LocalHost } from './local-host.js';

/**
 * The host where a server's data directory lives: this one, or `remote_host` over ssh (as
 * `cluster_owner`). The backup engines read data directories only through what this returns.
 */
export async function dataHostFor(server: ServerConfig): Promise<DataHost> {
  if (server.remoteHost) {
    throw new BartError(`server ${server.name} has remote_host set; backups of remote servers arrive with the SSH support`);
  }
  return new LocalHost();
}
