// PostgreSQL version: supported major versions checked, and the backup start and stop SQL for each.

import type pg from 'pg';
import { BartError } from '../util/errors.js';
import { queryValue } from './connection.js';

/** Oldest and newest major versions pgbart supports. */
export const MIN_MAJOR_VERSION = 13;
export const MAX_MAJOR_VERSION = 18;

/** A server's version: `server_version_num` and its major part. */
export interface ServerVersion {
  num: number;
  major: number;
}

/** Reads and checks the server version of a connected server. */
export async function serverVersion(client: pg.Client): Promise<ServerVersion> {
  const num = Number(await queryValue(client, 'SHOW server_version_num'));
  const major = Math.floor(num / 10000);
  if (major < MIN_MAJOR_VERSION || major > MAX_MAJOR_VERSION) {
    throw new BartError(
      `PostgreSQL ${major} is not supported: pgbart works with PostgreSQL ${MIN_MAJOR_VERSION} to ${MAX_MAJOR_VERSION}`,
    );
  }
  return { num, major };
}

/** SQL that starts a non-exclusive backup; returns one row with the start LSN as `lsn`. */
export function backupStartSql(major: number): string {
  return major >= 15 ? 'SELECT pg_backup_start($1, $2) AS lsn' : 'SELECT pg_start_backup($1, $2, false) AS lsn';
}

/**
 * SQL that ends a non-exclusive backup; returns lsn, labelfile, spcmapfile. With `waitForArchive`
 * it returns only once the last WAL segment the backup needs is archived.
 */
export function backupStopSql(major: number, waitForArchive = true): string {
  return major >= 15
    ? `SELECT lsn, labelfile, spcmapfile FROM pg_backup_stop(${waitForArchive})`
    : `SELECT lsn, labelfile, spcmapfile FROM pg_stop_backup(false, ${waitForArchive})`;
}
