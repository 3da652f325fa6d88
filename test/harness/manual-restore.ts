// Test harness: a pgbart backup restored with standard tools only, as the catalog format documents.

import {
  chownSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  appendFileSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { TestCluster } from './cluster.js';
import { runOk, testUserIds } from './os.js';

const DECOMPRESS: Record<string, string> = { none: 'cat', gzip: 'gzip -dc', lz4: 'lz4 -dc', zstd: 'zstd -dc -q' };
const EXT: Record<string, string> = { none: '', gzip: '.gz', lz4: '.lz4', zstd: '.zst' };

function field(info: string, key: string): string {
  const m = new RegExp(`^${key.replace(/[()]/g, '\\$&')}: (.*)$`, 'm').exec(info);
  if (!m) throw new Error(`backupinfo has no ${key}`);
  return m[1]!;
}

/**
 * Restores a pgbart backup with nothing but standard tools (tar, gzip/lz4/zstd, cp), as a DBA
 * could without pgbart: proves the backup format is what docs/catalog-format.md says, independent
 * of pgbart's RESTORE. Recovery uses only the WAL inside the backup. Returns the started cluster.
 */
export async function restoreByHand(backupDir: string, version: number, target: string): Promise<TestCluster> {
  const info = readFileSync(join(backupDir, 'backupinfo'), 'utf8');
  const format = field(info, 'BACKUP FORMAT');
  const compression = field(info, 'COMPRESSION');
  const tablespaces = [...info.matchAll(/^ (\d+)\t([^\t]*)\t(.*)$/gm)].map((m) => ({ oid: m[1]!, location: m[3]! }));
  const sh = (cmd: string) => runOk('sh', ['-c', cmd]);
  mkdirSync(target, { mode: 0o700 });
  const ids = testUserIds();
  if (ids) chownSync(target, ids.uid, ids.gid);
  const tsTarget = (oid: string) => `${target}_ts${oid}`;
  if (format === 'tar') {
    await sh(`${DECOMPRESS[compression]} < '${backupDir}/base.tar${EXT[compression]}' | tar -xf - -C '${target}'`);
    for (const ts of tablespaces) {
      mkdirSync(tsTarget(ts.oid), { mode: 0o700 });
      if (ids) chownSync(tsTarget(ts.oid), ids.uid, ids.gid);
      await sh(
        `${DECOMPRESS[compression]} < '${backupDir}/${ts.oid}.tar${EXT[compression]}' | tar -xf - -C '${tsTarget(ts.oid)}'`,
      );
    }
  } else {
    await sh(`cp -a '${backupDir}/base/.' '${target}/'`);
    for (const ts of tablespaces) {
      mkdirSync(tsTarget(ts.oid), { mode: 0o700 });
      if (ids) chownSync(tsTarget(ts.oid), ids.uid, ids.gid);
      await sh(`cp -a '${backupDir}/${ts.oid}/.' '${tsTarget(ts.oid)}/'`);
      rmSync(join(target, 'pg_tblspc', ts.oid));
    }
    if (compression !== 'none') {
      const tool = { gzip: 'gzip -d', lz4: 'lz4 -d -q --rm', zstd: 'zstd -d -q --rm' }[
        compression as 'gzip' | 'lz4' | 'zstd'
      ];
      for (const dir of [target, ...tablespaces.map((t) => tsTarget(t.oid))]) {
        await sh(`find '${dir}' -type f -name '*${EXT[compression]}' -exec ${tool} {} +`);
      }
    }
  }
  // Link tablespaces to their new place ourselves; without tablespace_map PostgreSQL keeps our links.
  for (const ts of tablespaces) {
    rmSync(join(target, 'pg_tblspc', ts.oid), { force: true }); // pg_basebackup's tar carries the original link
    symlinkSync(tsTarget(ts.oid), join(target, 'pg_tblspc', ts.oid));
  }
  rmSync(join(target, 'tablespace_map'), { force: true });
  const walDir = join(target, 'backup_wal');
  mkdirSync(walDir);
  for (const name of readdirSync(join(target, 'pg_wal'))) {
    if (name !== 'archive_status') renameSync(join(target, 'pg_wal', name), join(walDir, name));
  }
  writeFileSync(join(target, 'recovery.signal'), '');
  appendFileSync(join(target, 'postgresql.auto.conf'), `\nrestore_command = 'cp ${walDir}/%f %p'\n`);
  if (ids)
    await runOk('chown', ['-R', `${ids.uid}:${ids.gid}`, target, ...tablespaces.map((t) => tsTarget(t.oid))], {
      asTestUser: false,
    });
  if (!existsSync(join(target, 'PG_VERSION'))) throw new Error('restored directory has no PG_VERSION');
  return TestCluster.create({ version, dataDir: target, conf: { archive_mode: 'off' } });
}

/** Removes a hand-restored data directory and its tablespace copies. */
export function removeRestored(target: string): void {
  const parent = join(target, '..');
  const base = target.slice(parent.length + 1);
  for (const name of readdirSync(parent))
    if (name === base || name.startsWith(`${base}_ts`)) rmSync(join(parent, name), { recursive: true, force: true });
}
