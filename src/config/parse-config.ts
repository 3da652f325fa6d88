// Configuration: bart.cfg parsed and validated, every parameter, its scope and its check.

import { readFileSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { BartError, isErrnoError } from '../util/errors.js';
import { sshDestinationProblem } from '../util/ssh-destination.js';
import { backupNameProblem } from './backup-name.js';
import {
  REPOSITORY_PARAMETERS,
  parseRepositorySettings,
  resolveRepository,
  s3RepositoryOf,
} from './repository-config.js';
import { parseRetentionPolicy } from './retention-policy.js';
import type { BartConfig, GlobalConfig, OverridableSettings, ServerConfig, UserAtHost, XlogMethod } from './types.js';

/** Where a parameter may appear. */
type Scope = 'global' | 'server' | 'both';

/** A raw `key = value` with the line it came from. */
interface RawEntry {
  value: string;
  line: number;
}

interface RawSection {
  name: string;
  line: number;
  entries: Map<string, RawEntry>;
}

/** Every bart.cfg parameter, where it may appear, and how its value is checked. */
const PARAMETERS: Record<string, Scope> = {
  bart_host: 'global',
  backup_path: 'global',
  pg_basebackup_path: 'global',
  logfile: 'global',
  scanner_logfile: 'global',
  bart_socket_directory: 'global',
  bart_socket_name: 'global',
  retention_policy: 'both',
  wal_compression: 'both',
  copy_wals_during_restore: 'both',
  xlog_method: 'both',
  thread_count: 'both',
  batch_size: 'both',
  scan_interval: 'both',
  mbm_scan_timeout: 'both',
  workers: 'both',
  retention_requires_verified_restore: 'both',
  // pgbart extensions: where VERIFY-RESTORE finds the server's binaries (else auto-detected).
  pg_ctl_path: 'both',
  postgres_bin_path: 'both',
  // pgbart extensions: encryption at rest (src/storage/encryption/), in [BART] or per server.
  repository_cipher: 'both',
  repository_cipher_pass_file: 'both',
  // pgbart extensions: asynchronous WAL archiving (src/archive/async-*.ts).
  archive_async: 'both',
  archive_async_workers: 'both',
  archive_async_queue_max: 'both',
  spool_path: 'global',
  // pgbart extension: large local files written past the page cache (src/util/direct-writer.ts).
  direct_io: 'global',
  host: 'server',
  port: 'server',
  user: 'server',
  cluster_owner: 'server',
  remote_host: 'server',
  archive_path: 'server',
  archive_command: 'server',
  tablespace_path: 'server',
  allow_incremental_backups: 'server',
  description: 'server',
  backup_name: 'server',
  // pgbart extensions: where the catalog lives (repository-config.ts), in [BART] or per server.
  ...Object.fromEntries(REPOSITORY_PARAMETERS.map((p) => [p, 'both' as const])),
};

const OVERRIDABLE_DEFAULTS: OverridableSettings = {
  retentionPolicy: { kind: 'none' },
  walCompression: false,
  copyWalsDuringRestore: false,
  xlogMethod: 'fetch',
  threadCount: 1,
  batchSize: 49152,
  scanInterval: 0,
  mbmScanTimeout: 20,
  workers: 1,
  retentionRequiresVerifiedRestore: false,
  repositoryCipher: 'none',
  archiveAsync: false,
  archiveAsyncWorkers: 2,
  archiveAsyncQueueMax: 64,
};

/** Reads and validates a bart.cfg; every problem is a BartError naming `file:line`. */
export function loadConfig(path: string): BartConfig {
  const absolute = resolve(path);
  let text: string;
  try {
    text = readFileSync(absolute, 'utf8');
  } catch (err) {
    const why =
      isErrnoError(err) && err.code === 'ENOENT' ? 'no such file' : isErrnoError(err) ? err.code : String(err);
    throw new BartError(`cannot read configuration file "${absolute}": ${why}`);
  }
  return parseConfig(text, absolute);
}

/** Validates bart.cfg text; `file` is used in messages only. */
export function parseConfig(text: string, file: string): BartConfig {
  const sections = splitSections(text, file);
  const at = (line: number) => `${file}:${line}`;

  const bart = sections.find((s) => s.name.toUpperCase() === 'BART');
  if (!bart) throw new BartError(`${file}: missing the [BART] section (it holds bart_host and backup_path)`);

  for (const section of sections) {
    const isGlobal = section === bart;
    for (const [key, entry] of section.entries) {
      const scope = PARAMETERS[key];
      if (!scope) {
        const known = Object.keys(PARAMETERS).filter((k) => PARAMETERS[k] !== (isGlobal ? 'server' : 'global'));
        throw new BartError(
          `${at(entry.line)}: unknown parameter "${key}" in section [${section.name}]; allowed here: ${known.join(', ')}`,
        );
      }
      if (isGlobal && scope === 'server') {
        throw new BartError(`${at(entry.line)}: parameter "${key}" belongs in a server section, not in [BART]`);
      }
      if (!isGlobal && scope === 'global') {
        throw new BartError(
          `${at(entry.line)}: parameter "${key}" is allowed only in the [BART] section, not in [${section.name}]`,
        );
      }
    }
  }

  const global = parseGlobal(bart, at, file);
  const servers = sections.filter((s) => s !== bart).map((s) => parseServer(s, global, at));
  return { path: file, global, servers };
}

function splitSections(text: string, file: string): RawSection[] {
  const sections: RawSection[] = [];
  const seen = new Map<string, number>();
  let current: RawSection | undefined;
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const lineNo = i + 1;
    const line = lines[i]!.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[([^\]]*)\]$/.exec(line);
    if (header) {
      const name = header[1]!.trim();
      if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(name)) {
        throw new BartError(
          `${file}:${lineNo}: invalid section name "[${name}]": use letters, digits, "_", "." and "-"`,
        );
      }
      const key = name.toLowerCase();
      const previous = seen.get(key);
      if (previous !== undefined) {
        throw new BartError(
          `${file}:${lineNo}: duplicate section [${name}] (first defined at line ${previous}; server names are case-insensitive)`,
        );
      }
      seen.set(key, lineNo);
      current = { name, line: lineNo, entries: new Map() };
      sections.push(current);
      continue;
    }
    const kv = /^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(line);
    if (!kv)
      throw new BartError(`${file}:${lineNo}: cannot parse "${line}": expected "[section]" or "parameter = value"`);
    if (!current) throw new BartError(`${file}:${lineNo}: parameter "${kv[1]}" appears before any [section]`);
    const key = kv[1]!.toLowerCase();
    const previous = current.entries.get(key);
    if (previous) {
      throw new BartError(
        `${file}:${lineNo}: duplicate parameter "${key}" in [${current.name}] (first set at line ${previous.line})`,
      );
    }
    current.entries.set(key, { value: unquote(stripComment(kv[2]!)), line: lineNo });
  }
  return sections;
}

/** Removes a trailing ` # comment` outside quotes. */
function stripComment(value: string): string {
  let quote: string | undefined;
  for (let i = 0; i < value.length; i++) {
    const c = value[i]!;
    if (quote) {
      if (c === quote) quote = undefined;
    } else if (c === "'" || c === '"') {
      quote = c;
    } else if (c === '#' && (i === 0 || /\s/.test(value[i - 1]!))) {
      return value.slice(0, i).trim();
    }
  }
  return value.trim();
}

function unquote(value: string): string {
  if (
    value.length >= 2 &&
    ((value.startsWith("'") && value.endsWith("'")) || (value.startsWith('"') && value.endsWith('"')))
  ) {
    return value.slice(1, -1);
  }
  return value;
}

type At = (line: number) => string;

function parseUserAtHost(entry: RawEntry, key: string, at: At): UserAtHost {
  const problem = sshDestinationProblem(entry.value);
  if (problem) throw new BartError(`${at(entry.line)}: ${key} = "${entry.value}" is invalid: ${problem}`);
  const m = /^([A-Za-z0-9_][A-Za-z0-9_.-]*)@([A-Za-z0-9_.:-]+|\[[0-9A-Fa-f:]+\])$/.exec(entry.value);
  if (!m)
    throw new BartError(
      `${at(entry.line)}: ${key} = "${entry.value}" is invalid: expected user@host (e.g. postgres@192.168.0.10)`,
    );
  return { user: m[1]!, host: m[2]! };
}

function parseInteger(entry: RawEntry, key: string, min: number, max: number, at: At): number {
  if (!/^\d+$/.test(entry.value)) {
    throw new BartError(
      `${at(entry.line)}: ${key} = "${entry.value}" is not a number: expected an integer from ${min} to ${max}`,
    );
  }
  const n = Number(entry.value);
  if (n < min || n > max)
    throw new BartError(`${at(entry.line)}: ${key} = ${entry.value} is out of range: allowed ${min} to ${max}`);
  return n;
}

function parseEnabled(entry: RawEntry, key: string, at: At): boolean {
  const v = entry.value.toLowerCase();
  if (v === 'enabled') return true;
  if (v === 'disabled') return false;
  throw new BartError(
    `${at(entry.line)}: ${key} = "${entry.value}" is invalid: allowed values are enabled and disabled`,
  );
}

function parsePath(entry: RawEntry, key: string, at: At): string {
  if (!isAbsolute(entry.value))
    throw new BartError(`${at(entry.line)}: ${key} = "${entry.value}" must be an absolute path`);
  return entry.value.replace(/\/+$/, '') || '/';
}

function parseOverridable(section: RawSection, base: OverridableSettings, at: At): OverridableSettings {
  const e = section.entries;
  const out: OverridableSettings = { ...base };
  const rp = e.get('retention_policy');
  if (rp) {
    const policy = parseRetentionPolicy(rp.value);
    if (!policy) {
      throw new BartError(
        `${at(rp.line)}: retention_policy = "${rp.value}" is invalid: expected "N BACKUPS", "N DAYS", "N WEEKS", "N MONTHS" (N >= 1), a bare N, or none`,
      );
    }
    out.retentionPolicy = policy;
  }
  const wc = e.get('wal_compression');
  if (wc) out.walCompression = parseEnabled(wc, 'wal_compression', at);
  const cw = e.get('copy_wals_during_restore');
  if (cw) out.copyWalsDuringRestore = parseEnabled(cw, 'copy_wals_during_restore', at);
  const xm = e.get('xlog_method');
  if (xm) {
    const v = xm.value.toLowerCase();
    if (v !== 'fetch' && v !== 'stream')
      throw new BartError(
        `${at(xm.line)}: xlog_method = "${xm.value}" is invalid: allowed values are fetch and stream`,
      );
    out.xlogMethod = v as XlogMethod;
  }
  const tc = e.get('thread_count');
  if (tc) out.threadCount = parseInteger(tc, 'thread_count', 1, 128, at);
  const bs = e.get('batch_size');
  if (bs) out.batchSize = parseInteger(bs, 'batch_size', 1, 131072, at);
  const si = e.get('scan_interval');
  if (si) out.scanInterval = parseInteger(si, 'scan_interval', 0, 86400, at);
  const mt = e.get('mbm_scan_timeout');
  if (mt) out.mbmScanTimeout = parseInteger(mt, 'mbm_scan_timeout', 1, 86400, at);
  const w = e.get('workers');
  if (w) out.workers = parseInteger(w, 'workers', 1, 128, at);
  const rv = e.get('retention_requires_verified_restore');
  if (rv) out.retentionRequiresVerifiedRestore = parseEnabled(rv, 'retention_requires_verified_restore', at);
  // Existence and version are checked where they are used (VERIFY-RESTORE), naming this line.
  const pc = e.get('pg_ctl_path');
  if (pc) out.pgCtlPath = { path: parsePath(pc, 'pg_ctl_path', at), at: at(pc.line) };
  const pb = e.get('postgres_bin_path');
  // The two describe one installation: a section that sets either does not inherit the other.
  if (pc && !pb) delete out.postgresBinPath;
  if (pb && !pc) delete out.pgCtlPath;
  if (pb) out.postgresBinPath = { path: parsePath(pb, 'postgres_bin_path', at), at: at(pb.line) };
  const cipher = e.get('repository_cipher');
  if (cipher) {
    const v = cipher.value.toLowerCase();
    if (v !== 'none' && v !== 'aes-256-gcm')
      throw new BartError(
        `${at(cipher.line)}: repository_cipher = "${cipher.value}" is invalid: allowed values are none and aes-256-gcm`,
      );
    out.repositoryCipher = v;
  }
  // The passphrase itself is never in bart.cfg: only the file that holds it (checked when it is read).
  const passFile = e.get('repository_cipher_pass_file');
  if (passFile)
    out.repositoryCipherPassFile = {
      path: parsePath(passFile, 'repository_cipher_pass_file', at),
      at: at(passFile.line),
    };
  const aa = e.get('archive_async');
  if (aa) out.archiveAsync = parseOnOff(aa, 'archive_async', at);
  const aw = e.get('archive_async_workers');
  if (aw) out.archiveAsyncWorkers = parseInteger(aw, 'archive_async_workers', 1, 32, at);
  const aq = e.get('archive_async_queue_max');
  if (aq) out.archiveAsyncQueueMax = parseInteger(aq, 'archive_async_queue_max', 1, 100000, at);
  return out;
}

/** on/off, also spelled enabled/disabled like BART's own switches. */
function parseOnOff(entry: RawEntry, key: string, at: At): boolean {
  const v = entry.value.toLowerCase();
  if (v === 'on' || v === 'enabled') return true;
  if (v === 'off' || v === 'disabled') return false;
  throw new BartError(
    `${at(entry.line)}: ${key} = "${entry.value}" is invalid: allowed values are on and off (or enabled and disabled)`,
  );
}

function required(section: RawSection, key: string, file: string, what: string): RawEntry {
  const entry = section.entries.get(key);
  if (!entry || entry.value === '') {
    throw new BartError(
      `${file}:${section.line}: section [${section.name}] is missing the required parameter "${key}" (${what})`,
    );
  }
  return entry;
}

function parseGlobal(section: RawSection, at: At, file: string): GlobalConfig {
  const e = section.entries;
  const bartHost = parseUserAtHost(
    required(section, 'bart_host', file, 'user@host of the BART user on this host'),
    'bart_host',
    at,
  );
  const backupPath = parsePath(
    required(section, 'backup_path', file, 'the directory that holds the backup catalog'),
    'backup_path',
    at,
  );
  const pgb = e.get('pg_basebackup_path');
  const socketName = e.get('bart_socket_name');
  if (socketName && !/^[A-Za-z0-9_.-]+$/.test(socketName.value)) {
    throw new BartError(
      `${at(socketName.line)}: bart_socket_name = "${socketName.value}" is invalid: use a plain file name`,
    );
  }
  const repositoryDefaults = parseRepositorySettings(section, {}, at);
  const s3Repository = s3RepositoryOf(repositoryDefaults);
  return {
    ...parseOverridable(section, OVERRIDABLE_DEFAULTS, at),
    bartHost,
    backupPath,
    ...(pgb ? { pgBasebackupPath: parsePath(pgb, 'pg_basebackup_path', at) } : {}),
    logfile: e.get('logfile') ? parsePath(e.get('logfile')!, 'logfile', at) : '/tmp/bart.log',
    scannerLogfile: e.get('scanner_logfile')
      ? parsePath(e.get('scanner_logfile')!, 'scanner_logfile', at)
      : '/tmp/bart_scanner.log',
    // Unset: a private per-user directory, /tmp/bart-<uid>, decided where the scanner paths are built
    // (src/scanner/paths.ts), once bart runs as the BART user.
    ...(e.get('bart_socket_directory')
      ? { bartSocketDirectory: parsePath(e.get('bart_socket_directory')!, 'bart_socket_directory', at) }
      : {}),
    ...(socketName ? { bartSocketName: socketName.value } : {}),
    ...(e.get('spool_path') ? { spoolPath: parsePath(e.get('spool_path')!, 'spool_path', at) } : {}),
    directIo: e.get('direct_io') ? parseOnOff(e.get('direct_io')!, 'direct_io', at) : true,
    repositoryDefaults,
    ...(s3Repository !== undefined ? { s3Repository } : {}),
  };
}

function parseTablespacePath(entry: RawEntry, at: At): Map<number, string> {
  const map = new Map<number, string>();
  for (const part of entry.value
    .split(';')
    .map((p) => p.trim())
    .filter((p) => p !== '')) {
    const m = /^(\d+)=(\/.*)$/.exec(part);
    if (!m)
      throw new BartError(
        `${at(entry.line)}: tablespace_path entry "${part}" is invalid: expected OID=/absolute/path, entries separated by ";"`,
      );
    const oid = Number(m[1]);
    if (map.has(oid)) throw new BartError(`${at(entry.line)}: tablespace_path names OID ${oid} twice`);
    map.set(oid, m[2]!.replace(/\/+$/, ''));
  }
  return map;
}

function parseServer(section: RawSection, global: GlobalConfig, at: At): ServerConfig {
  const e = section.entries;
  const file = at(0).replace(/:0$/, '');
  const name = section.name.toLowerCase();
  const host = required(section, 'host', file, 'host name or IP address of the database server').value;
  const user = required(
    section,
    'user',
    file,
    'the PostgreSQL superuser with replication rights that bart connects as',
  ).value;
  const clusterOwner = required(section, 'cluster_owner', file, 'the OS user that owns the data directory').value;
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(clusterOwner)) {
    throw new BartError(
      `${at(e.get('cluster_owner')!.line)}: cluster_owner = "${clusterOwner}" is not a valid OS user name`,
    );
  }
  const portEntry = e.get('port');
  const remote = e.get('remote_host');
  const backupName = e.get('backup_name');
  if (backupName) {
    const problem = backupNameProblem(backupName.value);
    if (problem)
      throw new BartError(`${at(backupName.line)}: backup_name = "${backupName.value}" is invalid: ${problem}`);
  }
  const archivePath = e.get('archive_path');
  const tablespacePath = e.get('tablespace_path');
  const description = e.get('description');
  const archiveCommand = e.get('archive_command');
  const incremental = e.get('allow_incremental_backups');
  return {
    ...parseOverridable(section, global, at),
    name,
    sectionName: section.name,
    line: section.line,
    host,
    port: portEntry ? parseInteger(portEntry, 'port', 1, 65535, at) : 5432,
    user,
    clusterOwner,
    ...(remote ? { remoteHost: parseUserAtHost(remote, 'remote_host', at) } : {}),
    archivePath: archivePath
      ? parsePath(archivePath, 'archive_path', at)
      : join(global.backupPath, name, 'archived_wals'),
    ...(archiveCommand && archiveCommand.value !== '' ? { archiveCommand: archiveCommand.value } : {}),
    tablespacePath: tablespacePath ? parseTablespacePath(tablespacePath, at) : new Map(),
    allowIncrementalBackups: incremental ? parseEnabled(incremental, 'allow_incremental_backups', at) : false,
    ...(description ? { description: description.value } : {}),
    ...(backupName ? { backupName: backupName.value } : {}),
    repository: resolveRepository(parseRepositorySettings(section, global.repositoryDefaults, at), section, at),
    explicit: new Set(e.keys()),
  };
}
