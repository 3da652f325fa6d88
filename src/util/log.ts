// Logging: console and logfile lines in BART's style, debug and quiet modes, secrets redacted.

import { appendFileSync } from 'node:fs';

/** Severity of a log line; `debug` lines appear only with `-d/--debug`. */
export type LogLevel = 'DEBUG' | 'INFO' | 'WARNING' | 'ERROR';

/** Where log lines go: the console (BART's `INFO:  ...` style) and the configured logfile. */
export interface LogSettings {
  /** Append timestamped lines here; undefined until the config is read. */
  logfile?: string;
  /** Show DEBUG lines on the console and write them to the logfile. */
  debug: boolean;
  /** Suppress console INFO lines (e.g. `--output json`, where stdout is data). */
  quiet: boolean;
}

const settings: LogSettings = { debug: false, quiet: false };
let logfileBroken = false;

/** Changes where and how much we log; called once the command line and config are read. */
export function configureLog(update: Partial<LogSettings>): void {
  Object.assign(settings, update);
  logfileBroken = false;
}

/** Hides passwords in connection strings and `password=...` fragments. */
export function redactSecrets(text: string): string {
  return text
    .replace(/(password\s*=\s*)('[^']*'|\S+)/gi, '$1********')
    .replace(/(postgres(?:ql)?:\/\/[^:/@\s]+:)[^@\s]+@/gi, '$1********@');
}

function timestamp(): string {
  const d = new Date();
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

function writeLogfile(level: LogLevel, message: string): void {
  if (!settings.logfile || logfileBroken) return;
  try {
    appendFileSync(settings.logfile, `${timestamp()} [${process.pid}] ${level}: ${message}\n`, { mode: 0o600 });
  } catch (err) {
    // A logfile we cannot write must not stop a backup; say so once on the console.
    logfileBroken = true;
    process.stderr.write(`WARNING: cannot write logfile "${settings.logfile}": ${(err as Error).message}\n`);
  }
}

function emit(level: LogLevel, raw: string): void {
  const message = redactSecrets(raw);
  if (level === 'DEBUG' && !settings.debug) return;
  writeLogfile(level, message);
  const line = `${level}:  ${message}\n`;
  if (level === 'ERROR' || level === 'WARNING') process.stderr.write(line);
  else if (!settings.quiet) process.stdout.write(line);
}

/** The process-wide logger used by every layer. */
export const log = {
  debug: (message: string) => emit('DEBUG', message),
  info: (message: string) => emit('INFO', message),
  warning: (message: string) => emit('WARNING', message),
  error: (message: string) => emit('ERROR', message),
  /** Writes a line to the logfile only (for details that would clutter the console). */
  fileOnly: (level: LogLevel, message: string) => writeLogfile(level, redactSecrets(message)),
};
