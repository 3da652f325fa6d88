// Test harness: one initdb per PostgreSQL version and test process, copied for each new cluster with its own system identifier.

import { crc32c } from '@node-rs/crc32';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readdirSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { serverBinDir } from './pg-binaries.js';
import { makeTempDir, removeTree, runOk } from './os.js';

/**
 * The initdb arguments every test cluster gets (data checksums on, trust authentication, C locale).
 * Written down once so the template and a fresh initdb can never differ.
 */
export const INITDB_ARGS = ['-k', '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--locale=C'];

/** A template data directory per version, made once per test process (initdb costs 1-4 s on this machine). */
const templates = new Map<number, Promise<string>>();
const templateDirs: string[] = [];
let exitHookInstalled = false;

function templateFor(version: number): Promise<string> {
  let t = templates.get(version);
  if (!t) {
    t = (async () => {
      const dir = makeTempDir(`pg${version}-template`);
      templateDirs.push(dir);
      if (!exitHookInstalled) {
        exitHookInstalled = true;
        process.on('exit', () => {
          for (const d of templateDirs) removeTree(d);
        });
      }
      // --no-sync: the template is a throwaway in a temp directory, and copies run with fsync = off.
      await runOk(join(serverBinDir(version), 'initdb'), [...INITDB_ARGS, '-N', '-D', join(dir, 'data')], {
        cwd: dir,
      });
      return join(dir, 'data');
    })();
    // A failed initdb is reported to every caller, but the next create() tries again.
    t.catch(() => templates.delete(version));
    templates.set(version, t);
  }
  return t;
}

/**
 * Makes `dataDir` a new, never-started cluster of `version`, as `initdb` would, by copying the
 * version's template and giving the copy a system identifier of its own: tests make several
 * clusters and pgbart refuses to mix their backups, WAL and restores by that identifier, so two
 * copies must differ exactly as two initdb runs do.
 */
export async function initCluster(version: number, dataDir: string, cwd: string): Promise<void> {
  const template = await templateFor(version);
  await runOk('cp', ['-a', template, dataDir], { cwd });
  setSystemIdentifier(dataDir, newSystemIdentifier());
}

/** A random identifier like initdb's (time in the high 32 bits), never 0. */
function newSystemIdentifier(): bigint {
  const seconds = BigInt(Math.floor(Date.now() / 1000));
  const low = (randomBytes(4).readUInt32LE(0) | 1) >>> 0;
  return (seconds << 32n) | BigInt(low);
}

/** XLP_LONG_HEADER in xlp_info, and the offset of xlp_sysid in XLogLongPageHeaderData. */
const XLP_LONG_HEADER = 0x0002;
const XLP_SYSID_OFFSET = 24;

/**
 * Rewrites the system identifier of a stopped, freshly initialized cluster: in global/pg_control
 * (its first field; the CRC-32C that follows the checked part is recomputed) and in the long page
 * header of every WAL segment (the server refuses WAL whose identifier differs from pg_control's).
 * Throws rather than guess when the files do not look as expected.
 */
export function setSystemIdentifier(dataDir: string, sysid: bigint): void {
  const controlPath = join(dataDir, 'global', 'pg_control');
  const control = readFileSync(controlPath);
  const old = control.readBigUInt64LE(0);
  // The CRC covers ControlFileData up to its crc field, whose offset differs between versions:
  // find the one 4-byte-aligned position where the stored CRC matches.
  let crcAt = -1;
  for (let at = 8; at + 4 <= 512; at += 4) {
    if (crc32c(control.subarray(0, at)) >>> 0 === control.readUInt32LE(at)) {
      crcAt = at;
      break;
    }
  }
  if (crcAt < 0) throw new Error(`${controlPath}: no CRC-32C found; cannot set the system identifier`);
  control.writeBigUInt64LE(sysid, 0);
  control.writeUInt32LE(crc32c(control.subarray(0, crcAt)) >>> 0, crcAt);
  const walDir = join(dataDir, 'pg_wal');
  const segments = readdirSync(walDir).filter((n) => /^[0-9A-F]{24}$/.test(n));
  if (segments.length === 0) throw new Error(`${walDir}: no WAL segment to give the new system identifier`);
  for (const name of segments) {
    const fd = openSync(join(walDir, name), 'r+');
    try {
      const header = Buffer.alloc(XLP_SYSID_OFFSET + 8);
      readSync(fd, header, 0, header.length, 0);
      if ((header.readUInt16LE(2) & XLP_LONG_HEADER) === 0 || header.readBigUInt64LE(XLP_SYSID_OFFSET) !== old)
        throw new Error(`${name}: first page is not a long header of system ${old}`);
      header.writeBigUInt64LE(sysid, XLP_SYSID_OFFSET);
      writeSync(fd, header, XLP_SYSID_OFFSET, 8, XLP_SYSID_OFFSET);
    } finally {
      closeSync(fd);
    }
  }
  writeFileSync(controlPath, control);
}
