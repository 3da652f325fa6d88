// PostgreSQL replication probe: a physical replication connection opened to run IDENTIFY_SYSTEM.

import { replicationClient } from './replication-client.js';
import { errorMessage } from '../util/errors.js';

/** Where to open the probe connection (password from ~/.pgpass or PGPASSWORD, as always). */
export interface ReplicationProbeTarget {
  host: string;
  port: number;
  user: string;
  connectTimeout?: number;
}

/** What IDENTIFY_SYSTEM said over a physical replication connection. */
export interface IdentifySystem {
  systemId: string;
  timeline: number;
  xlogpos: string;
}

/**
 * Opens a *physical* replication connection (`replication=true`, what BASE_BACKUP and WAL streaming
 * use, and what pg_hba's `replication` keyword matches) and runs IDENTIFY_SYSTEM. Throws the
 * server's own error text, which names the missing pg_hba entry or max_wal_senders limit.
 */
export async function probeReplicationConnection(target: ReplicationProbeTarget): Promise<IdentifySystem> {
  const client = replicationClient(target, 'pgbart check-config', (target.connectTimeout ?? 10) * 1000);
  try {
    await client.connect();
    const result = await client.query('IDENTIFY_SYSTEM');
    const row = result.rows[0] as Record<string, unknown> | undefined;
    return {
      systemId: String(row?.systemid ?? ''),
      timeline: Number(row?.timeline ?? 0),
      xlogpos: String(row?.xlogpos ?? ''),
    };
  } catch (err) {
    throw new Error(errorMessage(err));
  } finally {
    await client.end().catch(() => undefined);
  }
}
