// Data host choice: the host of a server's data directory, this one or remote_host over ssh.

import type { ServerConfig } from '../config/types.js';
import type { DataHost } from './data-host.js';
import { LocalHost } from './local/data-host.js';
import { SshDataHost } from './ssh/data-host.js';

/**
 * The host where a server's data directory lives: this one, or `remote_host` over ssh (as
 * `cluster_owner`). The backup engines read data directories only through what this returns.
 */
export async function dataHostFor(server: ServerConfig): Promise<DataHost> {
  if (server.remoteHost) return SshDataHost.connect(server.remoteHost);
  return new LocalHost();
}
