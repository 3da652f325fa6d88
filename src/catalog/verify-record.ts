// The last VERIFY-CHKSUM and VERIFY-RESTORE result of a backup, kept in its directory.
import { StorageNotFoundError, joinKey, type RepositoryStorage } from '../storage/storage.js';
import { errorMessage } from '../util/errors.js';
import { log } from '../util/log.js';
import { BACKUPINFO_FILE } from './layout.js';

/** A record is a line of JSON; anything much larger is damage and is not read into memory. */
const MAX_RECORD_BYTES = 64 * 1024;

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
export async function recordVerification(
  storage: RepositoryStorage,
  backupKey: string,
  record: VerifyRecord,
): Promise<void> {
  try {
    // Never recreate a backup that DELETE removed meanwhile (a write would create its directory again).
    if ((await storage.stat(joinKey(backupKey, BACKUPINFO_FILE))) === undefined) return;
    await storage.put(joinKey(backupKey, VERIFY_FILES[record.command]), Buffer.from(JSON.stringify(record) + '\n'));
  } catch (err) {
    const where = joinKey(storage.location, backupKey);
    log.warning(`could not record the ${record.command} result in ${where}: ${errorMessage(err)}`);
  }
}

/** Reads one record; a missing file is no record, a damaged one is reported and ignored. */
async function readRecord(
  storage: RepositoryStorage,
  backupKey: string,
  command: VerifyCommand,
): Promise<VerifyRecord | undefined> {
  const key = joinKey(backupKey, VERIFY_FILES[command]);
  const path = joinKey(storage.location, key);
  let text: string;
  try {
    text = (await storage.readAll(key, MAX_RECORD_BYTES)).toString('utf8');
  } catch (err) {
    if (err instanceof StorageNotFoundError) return undefined;
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
export async function readVerifications(storage: RepositoryStorage, backupKey: string): Promise<BackupVerifications> {
  const chksum = await readRecord(storage, backupKey, 'VERIFY-CHKSUM');
  const restore = await readRecord(storage, backupKey, 'VERIFY-RESTORE');
  return { ...(chksum ? { chksum } : {}), ...(restore ? { restore } : {}) };
}
