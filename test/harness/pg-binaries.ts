// Test harness: the repository root, PostgreSQL binaries per major version and the versions under test.

import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Root of the repository (tests run from dist/test/..., sources from test/...). */
export const REPO_ROOT = findRepoRoot(dirname(fileURLToPath(import.meta.url)));

function findRepoRoot(start: string): string {
  let dir = start;
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`cannot find package.json above ${start}`);
    dir = parent;
  }
  return dir;
}

/** Debian's PostgreSQL 15 binaries; also the client tools (psql, pgbench, pg_waldump, ...) for every version. */
export const DEBIAN_PG15_BIN = '/usr/lib/postgresql/15/bin';

/** Every major version the harness can run. */
export const ALL_VERSIONS = [14, 15, 16, 17, 18] as const;

/** Directory with initdb, pg_ctl and postgres for a major version. */
export function serverBinDir(major: number): string {
  if (major === 15) return DEBIAN_PG15_BIN;
  const dir = resolve(REPO_ROOT, 'node_modules', `pg${major}`, 'native', 'bin');
  if (!existsSync(join(dir, 'postgres'))) {
    throw new Error(`PostgreSQL ${major} binaries are not installed (expected ${dir}); run npm install`);
  }
  return dir;
}

/** A client tool from Debian's PostgreSQL 15 (works against 14-18 servers for psql/pgbench/pg_amcheck). */
export function clientTool(name: string): string {
  return join(DEBIAN_PG15_BIN, name);
}

/**
 * Versions the suite runs against: `PGBART_TEST_PG` (e.g. `15,17` or `all`), default 15 (Debian's server, whose
 * client tools — pg_basebackup, pgbench — every version's tests use). Other versions run in `npm run test:matrix`:
 * `npm test` has a 15-minute budget on a 2-core machine, and the suite is version-independent apart from the
 * version-specific cases that the matrix covers.
 */
export function versionsUnderTest(): number[] {
  const raw = process.env.PGBART_TEST_PG?.trim();
  if (!raw) return [15];
  if (raw === 'all') return [...ALL_VERSIONS];
  return raw.split(',').map((v) => {
    const n = Number(v.trim());
    if (!(ALL_VERSIONS as readonly number[]).includes(n))
      throw new Error(`PGBART_TEST_PG: unsupported version "${v}"; use 14-18 or all`);
    return n;
  });
}
