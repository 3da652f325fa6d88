// PostgreSQL connection: connecting with one-line errors, one-shot connections and single-value queries.

import pg from 'pg';
import { BartError, errorMessage } from '../util/errors.js';

/** Where and as whom to connect; passwords come from ~/.pgpass (or PGPASSWORD), never from argv. */
export interface ConnectionTarget {
  host: string;
  port: number;
  user: string;
  database?: string;
  /** Open a physical replication connection (for BASE_BACKUP / START_REPLICATION). */
  replication?: boolean;
  /** Seconds to wait for the connection; default 10. */
  connectTimeout?: number;
  applicationName?: string;
}

/** Opens a connection; failures become one-line BartErrors naming host, port and user. */
export async function connect(target: ConnectionTarget): Promise<pg.Client> {
  const client = new pg.Client({
    host: target.host,
    port: target.port,
    user: target.user,
    database: target.database ?? 'postgres',
    connectionTimeoutMillis: (target.connectTimeout ?? 10) * 1000,
    application_name: target.applicationName ?? 'pgbart',
    ...(target.replication ? { replication: 'database' as unknown as boolean } : {}),
  });
  // An idle client whose server goes away emits 'error'; without a listener Node would crash.
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => undefined);
    throw new BartError(`cannot connect to ${describeTarget(target)}: ${errorMessage(err)}`);
  }
  return client;
}

/** `user@host:port` for messages. */
export function describeTarget(target: ConnectionTarget): string {
  return `PostgreSQL server ${target.host}:${target.port} as user "${target.user}"${target.replication ? ' (replication connection)' : ''}`;
}

/** Runs `fn` with a fresh connection and always closes it. */
export async function withConnection<T>(target: ConnectionTarget, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = await connect(target);
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** One row's first column of a query, as text. */
export async function queryValue(client: pg.Client, sql: string, params: unknown[] = []): Promise<string | null> {
  const result = await client.query({ text: sql, values: params, rowMode: 'array' });
  const row = result.rows[0] as unknown[] | undefined;
  const value = row?.[0];
  return value === null || value === undefined ? null : String(value);
}
