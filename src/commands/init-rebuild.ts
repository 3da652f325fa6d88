// Command: INIT -r, backupinfo files rebuilt from manifests under the server lock.

import { acquireServerLock } from '../catalog/lock.js';
import { serverCatalogDir } from '../catalog/layout.js';
import { rebuildBackupInfos } from '../catalog/rebuild-backupinfo.js';
import { errorMessage } from '../util/errors.js';
import { log } from '../util/log.js';
import { selectServers, type CommandContext } from './context.js';

/**
 * `bart INIT -r [-s NAME|all] [-i ID|NAME|all]`: rebuilds backupinfo files from each backup's
 * manifest, names included, under the server lock. Non-zero exit when any backup could not be rebuilt.
 */
export async function initRebuild(
  ctx: CommandContext,
  serverName: string | undefined,
  backupId: string | undefined,
): Promise<number> {
  let failures = 0;
  for (const server of selectServers(ctx.config, serverName)) {
    try {
      const lock = await acquireServerLock(serverCatalogDir(ctx.config, server), 'INIT -r');
      try {
        const outcomes = await rebuildBackupInfos(ctx.config, server, backupId);
        if (outcomes.length === 0) log.info(`server ${server.name}: no backups to rebuild`);
        for (const o of outcomes) {
          const label = `backup ${o.id}${o.name ? ` (${o.name})` : ''} of server ${server.name}`;
          if (o.result === 'failed') {
            failures++;
            log.error(o.message);
          } else {
            log.info(`${label}: ${o.message}`);
          }
        }
      } finally {
        await lock.release();
      }
    } catch (err) {
      failures++;
      log.error(`server "${server.name}": ${errorMessage(err)}`);
    }
  }
  return failures === 0 ? 0 : 1;
}
