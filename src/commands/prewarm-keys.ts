// Concept: key derivation started before a command loads — the scrypt of an encrypted repository overlapped with module loading.

import type { BartConfig } from '../config/types.js';
import { startKeyDerivation } from '../storage/encryption/cipher-key.js';
import { readPassphrase } from '../storage/encryption/passphrase.js';
import { serverCatalogDir } from '../catalog/layout.js';
import { PosixStorage } from '../storage/posix/posix-storage.js';
import { selectServers } from './context.js';

/**
 * For each server `-s` names (all for none or `all`) whose POSIX repository is encrypted: starts the derivation of
 * its master key, without waiting for it. A BACKUP or RESTORE spends its first quarter second loading modules; the
 * derivation it would then start costs about as long, on a thread-pool thread. A pure head start: every error is
 * left for the command to meet and report (nothing is decided here). S3 repositories are left out: reading their
 * key object means starting the S3 client, which is the start-up work this is meant to overlap.
 */
export async function prewarmKeys(config: BartConfig, serverName: string | undefined): Promise<void> {
  let servers;
  try {
    servers = selectServers(config, serverName);
  } catch {
    return;
  }
  for (const server of servers) {
    if (server.repositoryCipher === 'none' || server.repository.kind !== 'posix') continue;
    // The POSIX driver itself, not openRepositoryDriver: that module brings the S3 and cipher-storage modules (HTTP,
    // TLS, worker threads) whose loading delayed the derivation by ~50 ms.
    const storage = new PosixStorage(serverCatalogDir(config, server));
    await startKeyDerivation(storage, () => readPassphrase(server.repositoryCipherPassFile));
    await storage.close().catch(() => undefined);
  }
}
