// Recovery target: RESTORE's target options parsed and checked against the backup and timeline history.

import { gunzipSync } from 'node:zlib';
import { joinKey, type RepositoryStorage } from '../storage/storage.js';
import { requireConfSafe, type RecoveryTarget } from '../postgres/recovery-config.js';
import { BartError } from '../util/errors.js';
import { formatLsn, isLsn, parseLsn } from '../util/lsn.js';
import type { BackupInfo } from '../catalog/backup-info.js';
import { findArchived } from '../catalog/catalog.js';
import { historyFileName, parseTimelineHistory } from '../wal/timeline-history.js';

/** RESTORE's target options as given on the command line. */
export interface TargetOptions {
  targetTli?: string;
  targetXid?: string;
  targetTimestamp?: string;
  targetLsn?: string;
  targetName?: string;
  targetImmediate?: boolean;
  targetExclusive?: boolean;
  targetAction?: string;
}

/** The validated recovery plan, before it is checked against a backup. */
export interface ParsedTarget {
  target: RecoveryTarget;
  /** For a time target: the instant, to compare with the backup's end. */
  time?: Date;
  inclusive: boolean;
  /** `latest`, `current` or a decimal timeline number; undefined = PostgreSQL's default (latest). */
  timeline?: string;
  action?: 'pause' | 'promote' | 'shutdown';
  /** Human description, e.g. `time 2026-01-01 10:00:00+00`. */
  description: string;
}

/** Wall-clock fields of an instant in an IANA zone, as epoch ms of the same fields in UTC. */
function wallClockAsUtc(instant: number, zone: string): number {
  const parts = new Intl.DateTimeFormat('en-US', {
    timeZone: zone,
    hourCycle: 'h23',
    year: 'numeric',
    month: '2-digit',
    day: '2-digit',
    hour: '2-digit',
    minute: '2-digit',
    second: '2-digit',
  }).formatToParts(new Date(instant));
  const get = (t: string) => Number(parts.find((p) => p.type === t)?.value);
  return Date.UTC(get('year'), get('month') - 1, get('day'), get('hour'), get('minute'), get('second'));
}

/** True when Intl knows this time zone name. */
export function isKnownTimeZone(zone: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: zone });
    return true;
  } catch {
    return false;
  }
}

/** The UTC instant of a wall-clock time (given as UTC fields) in an IANA zone. */
function zonedToUtc(wallAsUtc: number, zone: string): number {
  let guess = wallAsUtc - (wallClockAsUtc(wallAsUtc, zone) - wallAsUtc);
  // A second round settles instants near a DST change.
  guess = wallAsUtc - (wallClockAsUtc(guess, zone) - guess);
  return guess;
}

/** A parsed recovery target time: the instant and its normalized text. */
export interface ParsedTime {
  instant: Date;
  /** `YYYY-MM-DD HH:MM:SS[.ffffff]+00`, what recovery_target_time gets. */
  normalized: string;
  /** True when the text carried no zone and `defaultZone` was used. */
  zoneAssumed: boolean;
}

/**
 * Parses a target timestamp: `YYYY-MM-DD[ T]HH:MM[:SS[.ffffff]]` (or a date alone) with an optional
 * zone (`Z`, `UTC`, `+02`, `-0530`, `+05:30` or an IANA name like `Europe/Paris`). Without a zone the
 * time is taken in `defaultZone` (the backed-up server's time zone). PostgreSQL gets the same instant
 * in UTC, so what it stops at is exactly what we checked.
 */
export function parseTargetTime(text: string, defaultZone: string): ParsedTime {
  const m = /^\s*(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?)?\s*(.*?)\s*$/.exec(text);
  const bad = () =>
    new BartError(
      `-g/--target-timestamp "${text}" is not a valid time: use YYYY-MM-DD HH:MM:SS[.ffffff] with an optional zone (Z, UTC, +02, -05:30 or a name such as Europe/Paris)`,
    );
  if (!m) throw bad();
  const [year, month, day, hour, minute, second] = [m[1], m[2], m[3], m[4] ?? '0', m[5] ?? '0', m[6] ?? '0'].map(
    Number,
  ) as [number, number, number, number, number, number];
  const fraction = m[7] ?? '';
  const zoneText = m[8]!;
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 59) throw bad();
  const wall = Date.UTC(year, month - 1, day, hour, minute, second);
  const check = new Date(wall);
  if (check.getUTCDate() !== day || check.getUTCMonth() !== month - 1) throw bad();
  let instant: number;
  let zoneAssumed = false;
  const offset = /^([+-])(\d{2})(?::?(\d{2}))?$/.exec(zoneText);
  if (zoneText === '') {
    zoneAssumed = true;
    instant = isKnownTimeZone(defaultZone)
      ? zonedToUtc(wall, defaultZone)
      : new Date(year, month - 1, day, hour, minute, second).getTime();
  } else if (/^(z|utc|gmt)$/i.test(zoneText)) {
    instant = wall;
  } else if (offset) {
    const minutes = Number(offset[2]) * 60 + Number(offset[3] ?? '0');
    instant = wall - (offset[1] === '-' ? -1 : 1) * minutes * 60000;
  } else if (isKnownTimeZone(zoneText)) {
    instant = zonedToUtc(wall, zoneText);
  } else {
    throw bad();
  }
  const d = new Date(instant);
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  const normalized =
    `${p(d.getUTCFullYear(), 4)}-${p(d.getUTCMonth() + 1)}-${p(d.getUTCDate())} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())}` +
    `${fraction ? '.' + fraction : ''}+00`;
  const ms = fraction ? Number(fraction.padEnd(3, '0').slice(0, 3)) : 0;
  return { instant: new Date(instant + ms), normalized, zoneAssumed };
}

/**
 * Validates the target options on their own: at most one target, options that need a target only
 * with one, well-formed values. `defaultZone` is used for times given without a zone.
 */
/**
 * `defaultZone` may be given as a function: it is asked only for a time target (finding a zone loads
 * ICU's time zone data, ~50-150 ms of a restore that has no time target).
 */
export function parseTargetOptions(o: TargetOptions, defaultZone: string | (() => string)): ParsedTarget {
  const given = [
    o.targetXid !== undefined && '-x/--target-xid',
    o.targetTimestamp !== undefined && '-g/--target-timestamp',
    o.targetLsn !== undefined && '--target-lsn',
    o.targetName !== undefined && '--target-name',
    o.targetImmediate === true && '--target-immediate',
  ].filter((x): x is string => typeof x === 'string');
  if (given.length > 1) throw new BartError(`choose one recovery target, not ${given.join(' and ')}`);
  let target: RecoveryTarget = { kind: 'none' };
  let time: Date | undefined;
  let description = 'end of the archived WAL';
  if (o.targetXid !== undefined) {
    // Plain xids and PostgreSQL 13+'s epoch-qualified 64-bit ones (pg_current_xact_id()).
    if (!/^\d{1,20}$/.test(o.targetXid) || BigInt(o.targetXid) < 3n)
      throw new BartError(`-x/--target-xid "${o.targetXid}" is not a transaction id (a number of 3 or more)`);
    target = { kind: 'xid', value: o.targetXid };
    description = `transaction ${o.targetXid}`;
  } else if (o.targetTimestamp !== undefined) {
    const parsed = parseTargetTime(o.targetTimestamp, typeof defaultZone === 'function' ? defaultZone() : defaultZone);
    target = { kind: 'time', value: parsed.normalized };
    time = parsed.instant;
    description = `time ${parsed.normalized}${parsed.zoneAssumed ? ` ("${o.targetTimestamp}" read in time zone ${defaultZone})` : ''}`;
  } else if (o.targetLsn !== undefined) {
    if (!isLsn(o.targetLsn))
      throw new BartError(`--target-lsn "${o.targetLsn}" is not an LSN: expected X/Y in hexadecimal, e.g. 0/1A2B3C4`);
    target = { kind: 'lsn', value: formatLsn(parseLsn(o.targetLsn)) };
    description = `LSN ${target.value}`;
  } else if (o.targetName !== undefined) {
    requireConfSafe('--target-name', o.targetName);
    if (o.targetName === '' || o.targetName.length > 63)
      throw new BartError(`--target-name "${o.targetName}" is not a restore point name (1 to 63 characters)`);
    target = { kind: 'name', value: o.targetName };
    description = `restore point "${o.targetName}"`;
  } else if (o.targetImmediate) {
    target = { kind: 'immediate' };
    description = 'end of the backup (--target-immediate)';
  }
  if (o.targetExclusive && !(target.kind === 'xid' || target.kind === 'time' || target.kind === 'lsn')) {
    throw new BartError('--target-exclusive needs a -x/--target-xid, -g/--target-timestamp or --target-lsn target');
  }
  if (o.targetAction !== undefined && target.kind === 'none') {
    throw new BartError(
      '--target-action needs a recovery target (-x, -g, --target-lsn, --target-name or --target-immediate): without one, recovery replays all archived WAL and ends',
    );
  }
  if (o.targetAction !== undefined && !['pause', 'promote', 'shutdown'].includes(o.targetAction)) {
    throw new BartError(`--target-action "${o.targetAction}" must be pause, promote or shutdown`);
  }
  let timeline: string | undefined;
  if (o.targetTli !== undefined) {
    const t = o.targetTli.trim().toLowerCase();
    if (t === 'latest' || t === 'current') timeline = t;
    else if (/^\d{1,10}$/.test(t) && Number(t) >= 1 && Number(t) <= 0xffffffff) timeline = String(Number(t));
    else if (/^0x[0-9a-f]{1,8}$/.test(t)) timeline = String(parseInt(t, 16));
    else throw new BartError(`-t/--target-tli "${o.targetTli}" must be a timeline number, latest or current`);
  }
  return {
    target,
    ...(time ? { time } : {}),
    inclusive: !o.targetExclusive,
    ...(timeline !== undefined ? { timeline } : {}),
    ...(o.targetAction !== undefined ? { action: o.targetAction as 'pause' | 'promote' | 'shutdown' } : {}),
    description,
  };
}

/**
 * Most bytes a timeline history file may take (stored, and once decompressed): one line per earlier
 * timeline, so even thousands of timelines stay far below it; a larger object is damaged or hostile.
 */
const MAX_HISTORY_BYTES = 4 * 1024 * 1024;

/** The archived history file of timeline `tli` (decompressed), with the name of the object it was read from. */
async function readHistory(
  archive: RepositoryStorage,
  tli: number,
): Promise<{ text: string; path: string } | undefined> {
  const key = await findArchived(archive, historyFileName(tli));
  if (!key) return undefined;
  const path = joinKey(archive.location, key);
  const raw = await archive.readAll(key, MAX_HISTORY_BYTES);
  let text: Buffer;
  try {
    text = key.endsWith('.gz') ? gunzipSync(raw, { maxOutputLength: MAX_HISTORY_BYTES }) : raw;
  } catch (err) {
    throw new BartError(`timeline history file "${path}" cannot be decompressed: ${(err as Error).message}`);
  }
  return { text: text.toString('utf8'), path };
}

/**
 * Checks the target against the backup: a time or LSN before the backup's end cannot be reached
 * (the error names the earliest point that can); a timeline must be the backup's or descend from it
 * after the backup's end, according to the archived history file.
 */
export async function checkTargetAgainstBackup(
  t: ParsedTarget,
  info: BackupInfo,
  archive: RepositoryStorage,
): Promise<void> {
  if (t.target.kind === 'time' && t.time && t.time.getTime() < info.stopTime.getTime()) {
    throw new BartError(
      `recovery target time ${t.target.value} is before the end of backup ${info.id} (it ended at ${info.stopTime.toISOString()}): ` +
        `the earliest time this backup can reach is ${info.stopTime.toISOString()}; choose a later time or an older backup with -i`,
    );
  }
  if (t.target.kind === 'lsn' && parseLsn(t.target.value) < parseLsn(info.stopLsn)) {
    throw new BartError(
      `recovery target LSN ${t.target.value} is before the end of backup ${info.id} (STOP LSN ${info.stopLsn}): ` +
        `the earliest LSN this backup can reach is ${info.stopLsn}; choose a later LSN or an older backup with -i`,
    );
  }
  if (t.timeline === undefined || t.timeline === 'latest' || t.timeline === 'current') return;
  const tli = Number(t.timeline);
  if (tli === info.timeline) return;
  if (tli < info.timeline) {
    throw new BartError(
      `-t/--target-tli ${tli} is older than the timeline of backup ${info.id} (${info.timeline}): recovery cannot go back to an earlier timeline; use an older backup`,
    );
  }
  const history = await readHistory(archive, tli);
  if (history === undefined) {
    throw new BartError(
      `-t/--target-tli ${tli}: timeline history file ${historyFileName(tli)} is not in the archive ${archive.location}; ` +
        'no such timeline was archived',
    );
  }
  // The history file is read strictly (it is input from the archive): a damaged one is an error, not "no ancestor".
  const spans = parseTimelineHistory(history.text, tli, history.path);
  const entry = spans.find((s) => s.timeline === info.timeline && s.end !== undefined);
  if (!entry) {
    throw new BartError(
      `-t/--target-tli ${tli} does not descend from timeline ${info.timeline} of backup ${info.id} (per its history file); choose a backup taken on its ancestry`,
    );
  }
  if (entry.end! < parseLsn(info.stopLsn)) {
    throw new BartError(
      `-t/--target-tli ${tli} branched off timeline ${info.timeline} at ${formatLsn(entry.end!)}, ` +
        `before backup ${info.id} ended (STOP LSN ${info.stopLsn}); ` +
        'that backup cannot follow it; choose an older backup',
    );
  }
}
