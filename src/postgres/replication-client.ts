// Replication client: a node-postgres client for a physical replication (walsender) connection.

import pg from 'pg';

/** Where to connect; the password comes from ~/.pgpass or PGPASSWORD, as always. */
export interface ReplicationEndpoint {
  host: string;
  port: number;
  user: string;
}

/**
 * A not yet connected client for a *physical* replication connection (`replication=true`: what
 * BASE_BACKUP, IDENTIFY_SYSTEM and WAL streaming need, and what pg_hba's `replication` keyword
 * matches). Its asynchronous 'error' events are swallowed: the caller sees failures as rejected
 * queries, and an unhandled 'error' would otherwise kill the process.
 */
export function replicationClient(
  to: ReplicationEndpoint,
  applicationName: string,
  connectTimeoutMs: number,
): pg.Client {
  const config: pg.ClientConfig & { replication: string } = {
    host: to.host,
    port: to.port,
    user: to.user,
    database: 'postgres',
    connectionTimeoutMillis: connectTimeoutMs,
    application_name: applicationName,
    // node-postgres sends this verbatim as the startup parameter; "true" = physical walsender.
    replication: 'true',
  };
  const client = new pg.Client(config);
  client.on('error', () => undefined);
  return client;
}
