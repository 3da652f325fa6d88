// PostgreSQL recovery settings: a restored cluster's recovery target, restore_command and signal file.

/**
 * Recovery settings of a restored cluster. PostgreSQL 12 and later (all pgbart supports, 13-18)
 * read them from the ordinary configuration (we write postgresql.auto.conf) and start recovery when
 * `recovery.signal` (or `standby.signal`) exists; recovery.conf is gone and would stop them starting.
 */

import { BartError } from '../util/errors.js';
import { singleQuote } from '../util/shell-quote.js';

/** Where recovery stops; `none` replays all archived WAL. */
export type RecoveryTarget =
  | { kind: 'none' }
  | { kind: 'immediate' }
  | { kind: 'time'; /** Normalized, with an explicit UTC offset. */ value: string }
  | { kind: 'xid'; value: string }
  | { kind: 'lsn'; value: string }
  | { kind: 'name'; value: string };

/** Everything that decides a restored cluster's recovery. */
export interface RecoveryOptions {
  /** Major version of the restored cluster. */
  major: number;
  /** The shell command PostgreSQL runs to fetch one WAL file (%f, %p placeholders). */
  restoreCommand: string;
  target: RecoveryTarget;
  /** recovery_target_inclusive; only meaningful for time, xid and lsn targets. */
  inclusive: boolean;
  /** recovery_target_timeline (`latest`, `current` or a number); PostgreSQL's default (latest) when absent. */
  timeline?: string;
  /** recovery_target_action; PostgreSQL's default (pause) when absent. */
  action?: 'pause' | 'promote' | 'shutdown';
  /** Start as a standby (standby.signal) instead of a one-time recovery. */
  standby: boolean;
}

/** Settings pgbart owns in a restored cluster's postgresql.auto.conf; older lines for them are dropped. */
export const MANAGED_SETTINGS = [
  'restore_command',
  'recovery_target',
  'recovery_target_time',
  'recovery_target_xid',
  'recovery_target_lsn',
  'recovery_target_name',
  'recovery_target_inclusive',
  'recovery_target_timeline',
  'recovery_target_action',
  'archive_mode',
] as const;

/** The signal file that starts recovery. */
export function signalFileName(opts: Pick<RecoveryOptions, 'standby'>): 'standby.signal' | 'recovery.signal' {
  return opts.standby ? 'standby.signal' : 'recovery.signal';
}

/**
 * Throws a BartError when `value` holds a line break or NUL. postgresql.auto.conf is read line by
 * line: a line break inside a quoted value would end the setting there and turn the rest into lines
 * of its own (another setting, or a syntax error that stops the restored server from starting).
 * `what` names the value for the message: an option (`--target-name`) or a setting.
 */
export function requireConfSafe(what: string, value: string): void {
  if (/[\n\r\0]/.test(value)) {
    throw new BartError(
      `${what} ${JSON.stringify(value)} contains a line break or NUL, ` +
        "which would break the restored cluster's postgresql.auto.conf",
    );
  }
}

/**
 * The settings, in the order they are written. archive_mode is turned off so the restored cluster
 * does not archive into the source's archive (BART did the same; the DBA turns it back on). A value
 * with a line break or NUL is a BartError ({@link requireConfSafe}): no caller can write a broken
 * postgresql.auto.conf.
 */
export function recoverySettings(opts: RecoveryOptions): [string, string][] {
  if (opts.major < 12)
    throw new Error(`PostgreSQL ${opts.major} needs recovery.conf, which pgbart does not write (it supports 13-18)`);
  const out: [string, string][] = [['restore_command', opts.restoreCommand]];
  const t = opts.target;
  // Every target setting is written, the unused ones empty: an empty value unsets it, so a stale
  // target in postgresql.conf can neither win nor make PostgreSQL refuse "multiple recovery targets".
  const targets: [string, string][] = [
    ['recovery_target', t.kind === 'immediate' ? 'immediate' : ''],
    ['recovery_target_time', t.kind === 'time' ? t.value : ''],
    ['recovery_target_xid', t.kind === 'xid' ? t.value : ''],
    ['recovery_target_lsn', t.kind === 'lsn' ? t.value : ''],
    ['recovery_target_name', t.kind === 'name' ? t.value : ''],
  ];
  // Empty ones first: PostgreSQL's assign hooks refuse any target setting, even an empty one,
  // once another target is set, so the one that counts must come last.
  out.push(...targets.filter(([, v]) => v === ''), ...targets.filter(([, v]) => v !== ''));
  if (t.kind === 'time' || t.kind === 'xid' || t.kind === 'lsn')
    out.push(['recovery_target_inclusive', opts.inclusive ? 'on' : 'off']);
  if (opts.timeline !== undefined) out.push(['recovery_target_timeline', opts.timeline]);
  if (opts.action !== undefined) out.push(['recovery_target_action', opts.action]);
  out.push(['archive_mode', 'off']);
  for (const [name, value] of out) requireConfSafe(`recovery setting ${name} =`, value);
  return out;
}

/** A value quoted for a PostgreSQL configuration file (single quotes doubled, backslashes escaped). */
export function quoteConfValue(value: string): string {
  return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

/** A word quoted for /bin/sh, and with `%` doubled so restore_command's placeholder expansion leaves it alone. */
export function shellQuoteForRestoreCommand(word: string): string {
  // Always quoted, even a plain path: the restore_command it goes into has always looked so.
  return singleQuote(word).replace(/%/g, '%%');
}

/** The setting name of a postgresql.auto.conf line, lower case; undefined for comments and blanks. */
function settingName(line: string): string | undefined {
  const m = /^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(=|\s)/.exec(line);
  return m ? m[1]!.toLowerCase() : undefined;
}

/**
 * postgresql.auto.conf with our settings: lines for the settings we manage are removed (a backup of
 * a cluster that was itself restored still carries that restore's recovery_target_* lines, which
 * would otherwise stop this recovery at the old target or make PostgreSQL refuse two targets), and
 * ours are appended after a comment that says who wrote them.
 */
export function mergeAutoConf(existing: string, settings: [string, string][], comment: string): string {
  const managed = new Set<string>(MANAGED_SETTINGS);
  const kept = existing.split('\n').filter((line) => {
    const name = settingName(line);
    return name === undefined || !managed.has(name);
  });
  while (kept.length > 0 && kept[kept.length - 1]!.trim() === '') kept.pop();
  const lines = [...kept, `# ${comment}`, ...settings.map(([k, v]) => `${k} = ${quoteConfValue(v)}`)];
  if (kept.length === 0)
    lines.unshift('# Do not edit this file manually!', '# It will be overwritten by the ALTER SYSTEM command.');
  return lines.join('\n') + '\n';
}

/** Recovery settings in postgresql.conf (not auto.conf) that would override nothing but confuse: names for a warning. */
export function recoverySettingsIn(confText: string): string[] {
  const found = new Set<string>();
  for (const line of confText.split('\n')) {
    const name = settingName(line);
    if (name && (name === 'restore_command' || name.startsWith('recovery_target'))) found.add(name);
  }
  return [...found];
}
