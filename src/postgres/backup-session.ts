// PostgreSQL backup session: pg_backup_start and pg_backup_stop held in one session, backup_label parsed.

import type pg from 'pg';
import { BartError, errorMessage } from '../util/errors.js';
import { backupStartSql, backupStopSql } from './server-version.js';

/** What pg_backup_stop returns, plus what we parse out of the label. */
export interface BackupStopResult {
  stopLsn: string;
  labelFile: string;
  tablespaceMap: string;
}

/** Fields of a backup_label file. */
export interface BackupLabel {
  startLsn: string;
  startWalFile: string;
  checkpointLsn: string;
  timeline: number;
}

/** Parses the `START WAL LOCATION`, `CHECKPOINT LOCATION` and `START TIMELINE` lines of a backup label. */
export function parseBackupLabel(text: string): BackupLabel {
  const start = /START WAL LOCATION: ([0-9A-F]+\/[0-9A-F]+) \(file ([0-9A-F]{24})\)/.exec(text);
  const checkpoint = /CHECKPOINT LOCATION: ([0-9A-F]+\/[0-9A-F]+)/.exec(text);
  const timeline = /START TIMELINE: (\d+)/.exec(text);
  if (!start || !checkpoint || !timeline) throw new BartError(`unexpected backup_label from the server:\n${text}`);
  return { startLsn: start[1]!, startWalFile: start[2]!, checkpointLsn: checkpoint[1]!, timeline: Number(timeline[1]) };
}

/**
 * A non-exclusive backup held open in one session: PostgreSQL ends backup mode by itself if this
 * session dies (Ctrl-C, kill -9, lost connection), so a failed pgbart never leaves the server stuck
 * in backup mode.
 */
export class BackupSession {
  private constructor(
    private readonly client: pg.Client,
    private readonly major: number,
  ) {}

  /** Starts backup mode with an immediate checkpoint. */
  static async start(
    client: pg.Client,
    major: number,
    label: string,
  ): Promise<{ session: BackupSession; startLsn: string }> {
    try {
      const r = await client.query<{ lsn: string }>(backupStartSql(major), [label, true]);
      return { session: new BackupSession(client, major), startLsn: r.rows[0]!.lsn };
    } catch (err) {
      throw new BartError(`could not start the backup on the server: ${errorMessage(err)}`);
    }
  }

  /** Ends backup mode; by default waits until the last WAL segment is archived. */
  async stop(waitForArchive = true): Promise<BackupStopResult> {
    try {
      // pg_backup_stop waits for archiving without a time limit; the server logs a warning while it waits.
      const r = await this.client.query<{ lsn: string; labelfile: string; spcmapfile: string | null }>(
        backupStopSql(this.major, waitForArchive),
      );
      const row = r.rows[0]!;
      return { stopLsn: row.lsn, labelFile: row.labelfile, tablespaceMap: row.spcmapfile ?? '' };
    } catch (err) {
      throw new BartError(`could not stop the backup on the server: ${errorMessage(err)}`);
    }
  }
}
