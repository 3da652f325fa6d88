// Concept: key derivation started before a command loads — the scrypt of an encrypted repository overlapped with module loading.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BartConfig } from '../config/types.js';
import { CIPHER_KEY_OBJECT, startKeyDerivation } from '../storage/encryption/cipher-key.js';
import { readPassphrase } from '../storage/encryption/passphrase.js';
import { selectServers } from './context.js';

/**
 * For each server `-s` names (all for none or `all`) whose POSIX repository is encrypted: reads its key object and
 * starts the master key's derivation, without waiting for it. A BACKUP or RESTORE spends its first quarter second
 * loading modules; the derivation it would then start costs about as long, on a thread-pool thread. A pure head
 * start: every error is left for the command to meet and report (nothing is decided here). S3 repositories are left
 * out: reading their key object means loading the S3 client, which is the module loading this is meant to overlap.
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
    try {
      const path = join(config.global.backupPath, server.name, CIPHER_KEY_OBJECT);
      const [text, passphrase] = await Promise.all([
        readFile(path, 'utf8'),
        readPassphrase(server.repositoryCipherPassFile),
      ]);
      if (text.length <= 64 * 1024) startKeyDerivation(text, passphrase);
    } catch {
      // No key object yet, no passphrase, unreadable: the command says so itself.
    }
  }
}
