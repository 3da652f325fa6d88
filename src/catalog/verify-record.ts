// The last VERIFY-CHKSUM and VERIFY-RESTORE result of a backup, kept in its directory.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { errorMessage, isErrnoError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fs-atomic.js';
import { log } from '../util/log.js';

/** The commands whose results are recorded. */
export type VerifyCommand = 'VERIFY-CHKSUM' | 'VERIFY-RESTORE';

/** One recorded result. */
export interface VerifyRecord {
  command: VerifyCommand;
  /** ISO 8601 UTC time the check ended. */
  time: string;
  result: 'OK' | 'FAILED';
  /** Why it failed (FAILED only). */
  reason?: string;
  /** What was checked, e.g. `amcheck: 5 databases, checksums: 1,234 files`. */
  details?: string;
}

/** The last result of each check, when there is one. */
export interface BackupVerifications {
  chksum?: VerifyRecord;
  restore?: VerifyRecord;
}

/**
 * One file per command, each rewritten whole: a VERIFY-CHKSUM and a VERIFY-RESTORE running at the
 * same time never overwrite each other's result, and backupinfo is never touched.
 */
export const VERIFY_FILES: Record<VerifyCommand, string> = {
  'VERIFY-CHKSUM': 'verify-chksum.json',
  'VERIFY-RESTORE': 'verify-restore.json',
};

/**
 * Records `record` as the last result of its command for the backup in `backupDir` (atomically:
 * a reader sees the previous result or this one). A backup deleted meanwhile is not an error; any
 * other failure to record is a warning, since the check itself is done and its verdict printed.
 */
export async function recordVerification(backupDir: string, record: VerifyRecord): Promise<void> {
  try {
    await writeFileAtomic(join(backupDir, VERIFY_FILES[record.command]), JSON.stringify(record) + '\n', 0o600);
  } catch (err) {
    if (isErrnoError(err) && err.code === 'ENOENT') return;
    log.warning(`could not record the ${record.command} result in ${backupDir}: ${errorMessage(err)}`);
  }
}

/** Reads one record; a missing file is no record, a damaged one is reported and ignored. */
async function readRecord(backupDir: string, command: VerifyCommand): Promise<VerifyRecord | undefined> {
  const path = join(backupDir, VERIFY_FILES[command]);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if (isErrnoError(err) && err.code === 'ENOENT') return undefined;
    log.warning(`cannot read ${path}: ${errorMessage(err)}`);
    return undefined;
  }
  try {
    const r = JSON.parse(text) as Partial<VerifyRecord>;
    const valid =
      r.command === command &&
      typeof r.time === 'string' &&
      !Number.isNaN(Date.parse(r.time)) &&
      (r.result === 'OK' || r.result === 'FAILED') &&
      (r.reason === undefined || typeof r.reason === 'string') &&
      (r.details === undefined || typeof r.details === 'string');
    if (valid) return r as VerifyRecord;
  } catch {
    // Reported below, as for a record of the wrong shape.
  }
  log.warning(`${path} is damaged; its ${command} result is ignored`);
  return undefined;
}

/** The last VERIFY-CHKSUM and VERIFY-RESTORE results recorded for the backup in `backupDir`. */
export async function readVerifications(backupDir: string): Promise<BackupVerifications> {
  const chksum = await readRecord(backupDir, 'VERIFY-CHKSUM');
  const restore = await readRecord(backupDir, 'VERIFY-RESTORE');
  return { ...(chksum ? { chksum } : {}), ...(restore ? { restore } : {}) };
}
