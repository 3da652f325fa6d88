import { after, before, describe, test } from 'node:test';
import { PosixStorage } from '../src/storage/posix/posix-storage.js';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, relative } from 'node:path';
import { spawnSync } from 'node:child_process';
import { createBackupFixture, backupIdFrom, type BackupFixture } from './harness/backup-fixture.js';
import { makeTempDir, removeTree, testUserIds } from './harness/os.js';
import { prng } from './harness/prng.js';
import { LONG_RUN, sized } from './harness/test-size.js';
import { BackupInfoError, parseBackupInfo, readBackupInfo } from '../src/catalog/backup-info.js';
import { findBackup, listBackups } from '../src/catalog/catalog.js';
import { readRestoredState } from '../src/catalog/chain.js';
import { verifyBackup } from '../src/catalog/verify-backup.js';
import type { BartConfig, ServerConfig } from '../src/config/types.js';
import { BartError } from '../src/util/errors.js';
import { isLsn } from '../src/util/lsn.js';

/**
 * Fuzzes the readers of catalog files (backupinfo, manifest.jsonl) with random and mutated copies of
 * a real backup's: every outcome must be a clean one (a damaged status, a FAILED verification, an
 * ERROR line), never a crash, and never a success on damaged data. Replay with PGBART_FUZZ_SEED.
 */
// A fixed seed and fewer cases in npm test; a fresh seed and every case in npm run test:long.
const SEED = Number(process.env.PGBART_FUZZ_SEED ?? (LONG_RUN ? Math.floor(Math.random() * 2 ** 31) : 20261124));
const MANIFEST_CASES = sized(20, 60);
const STORED_FILE_CASES = sized(2, 4);
const CLI_INFO_CASES = sized(12, 30);
const CLI_RESTORES = sized(4, 12);
const CLI_MANIFEST_CASES = sized(6, 20);
console.log(`fuzz-catalog seed ${SEED} (replay with PGBART_FUZZ_SEED=${SEED})`);
const STACK = /^\s+at .+[(:]\d+/m;

type Rng = () => number;
const pick = <T>(r: Rng, items: readonly T[]): T => items[Math.floor(r() * items.length)]!;
const BAD_VALUES = [
  '',
  'NaN',
  '-1',
  '1e400',
  '0x10',
  'abc',
  'none',
  ' 7',
  '7 ',
  '99999999999999999999999',
  '1.5',
  'Infinity',
  '٣',
  'bogus',
  '0/ZZ',
  'FFFFFFFFF/0',
  '2026-13-45T99:99:99Z',
  '\u0000',
  '\r',
  '../../etc',
  'active',
  'keep',
  '0',
  'damaged',
];

/** A random change to a backupinfo: a bad value, a line lost, doubled or swapped, a cut, a flipped byte, garbage. */
function mutateInfo(text: string, r: Rng, otherId: string): string {
  const lines = text.split('\n');
  const keyed = lines.map((l, i) => [l, i] as const).filter(([l]) => l.includes(': '));
  const [line, at] = pick(r, keyed);
  const key = line.slice(0, line.indexOf(': '));
  switch (Math.floor(r() * 8)) {
    case 0:
      lines[at] = `${key}: ${r() < 0.7 ? pick(r, BAD_VALUES) : String(Math.floor(r() * 1e6))}`;
      return lines.join('\n');
    case 1:
      lines.splice(at, 1);
      return lines.join('\n');
    case 2:
      lines.push(`${key}: ${pick(r, BAD_VALUES)}`);
      return lines.join('\n');
    case 3:
      return text.slice(0, Math.floor(r() * text.length));
    case 4: {
      const i = Math.floor(r() * text.length);
      return text.slice(0, i) + String.fromCharCode(Math.floor(r() * 128)) + text.slice(i + 1);
    }
    case 5: {
      const j = Math.floor(r() * lines.length);
      [lines[at], lines[j]] = [lines[j]!, lines[at]!];
      return lines.join('\n');
    }
    case 6:
      return Array.from({ length: Math.floor(r() * 400) }, () => String.fromCharCode(Math.floor(r() * 256))).join('');
    default:
      return text.replace(/^BACKUP IDENTIFIER: .*$/m, `BACKUP IDENTIFIER: ${otherId}`);
  }
}

/** A random change to a manifest that its own hash must catch (lines before the end line, or the end line's values). */
function mutateManifest(text: string, r: Rng): string {
  const lines = text.split('\n');
  const end = lines.findIndex((l) => l.startsWith('{"end"'));
  const at = Math.floor(r() * end);
  switch (Math.floor(r() * 7)) {
    case 0: {
      const l = lines[at]!;
      const i = Math.floor(r() * l.length);
      let c = String.fromCharCode(32 + Math.floor(r() * 95));
      if (c === l[i]) c = c === 'x' ? 'y' : 'x';
      lines[at] = l.slice(0, i) + c + l.slice(i + 1);
      return lines.join('\n');
    }
    case 1:
      lines.splice(at, 1);
      return lines.join('\n');
    case 2:
      lines.splice(at, 0, lines[at]!);
      return lines.join('\n');
    case 3:
      return lines
        .slice(0, end)
        .join('\n')
        .slice(0, Math.floor(r() * lines.slice(0, end).join('\n').length));
    case 4:
      lines[end] = lines[end]!.replace(/"sha256":"([0-9a-f])/, (_m, d: string) => `"sha256":"${d === '0' ? '1' : '0'}`);
      return lines.join('\n');
    case 5:
      const junk = ['null', '[]', '{}', '"x"', '{"f":null}', '{"a":{}}', '{"end":null}'];
      lines.splice(Math.floor(r() * (end + 1)), 0, pick(r, junk));
      return lines.join('\n');
    default:
      lines[end] = lines[end]!.replace(/"entries":(\d+)/, (_m, n: string) => `"entries":${Number(n) + 1}`);
      return lines.join('\n');
  }
}

/** What every accepted backupinfo must satisfy: the properties the commands rely on. */
function assertSane(info: ReturnType<typeof parseBackupInfo>, context: string): void {
  assert.ok(['active', 'obsolete', 'keep'].includes(info.status), context);
  assert.match(info.id, /^\d+$/, context);
  for (const n of [info.sizeBytes, info.dataBytes, info.walBytes]) {
    assert.ok(Number.isSafeInteger(n) && n >= 0, context);
  }
  assert.ok(Number.isInteger(info.timeline) && info.timeline >= 1, context);
  for (const l of [info.startLsn, info.stopLsn, info.checkpointLsn]) assert.ok(isLsn(l), context);
  assert.ok(!Number.isNaN(info.startTime.getTime()) && !Number.isNaN(info.stopTime.getTime()), context);
  assert.ok(['tar', 'plain'].includes(info.format), context);
  assert.ok(['none', 'gzip', 'lz4', 'zstd'].includes(info.compression), context);
  assert.ok(info.walSegmentSize > 0 && (info.walSegmentSize & (info.walSegmentSize - 1)) === 0, context);
}

/** Every stored file of a backup directory (not backupinfo or the manifest), with its size. */
function storedFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      const st = statSync(p);
      if (st.isDirectory()) walk(p);
      else if (st.isFile() && st.size > 0 && !['backupinfo', 'manifest.jsonl'].includes(name)) {
        out.push(relative(dir, p));
      }
    }
  };
  walk(dir);
  return out;
}

describe('catalog fuzz: backupinfo and manifest readers', () => {
  let fx: BackupFixture;
  let tarId: string;
  let plainId: string;
  const unhandled: unknown[] = [];
  const onUnhandled = (err: unknown) => unhandled.push(err);

  before(async () => {
    process.on('unhandledRejection', onUnhandled);
    fx = await createBackupFixture({ version: 15 });
    const take = async (args: string[]) => {
      const r = await fx.setup.bart(['BACKUP', '-s', fx.server, ...args]);
      assert.equal(r.code, 0, r.stderr);
      return backupIdFrom(r.stdout);
    };
    tarId = await take(['-F', 't', '-z']);
    plainId = await take(['-F', 'p']);
  });
  after(async () => {
    process.off('unhandledRejection', onUnhandled);
    await fx?.destroy();
  });

  test('in-process: 400 mutated backupinfos are sane or damaged, never an exception of another kind', async () => {
    const r = prng(SEED);
    const original = readFileSync(join(fx.backupDir(plainId), 'backupinfo'), 'utf8');
    assertSane(parseBackupInfo(original, 'original'), 'the original parses');
    const root = makeTempDir('fuzz-catalog');
    try {
      const config = { global: { backupPath: root } } as unknown as BartConfig;
      const server = { name: 'pg' } as unknown as ServerConfig;
      const dir = join(root, 'pg', plainId);
      mkdirSync(dir, { recursive: true });
      let damaged = 0;
      for (let i = 0; i < 400; i++) {
        const text = mutateInfo(original, r, String(BigInt(plainId) + 1n));
        const context = `case ${i} (seed ${SEED}): ${JSON.stringify(text.slice(0, 2000))}`;
        try {
          assertSane(parseBackupInfo(text, 'x'), context);
        } catch (err) {
          if (err instanceof assert.AssertionError) throw err;
          assert.ok(err instanceof BackupInfoError, `${context}: ${String(err)}`);
          assert.doesNotMatch(err.message, /\n/, 'one line');
        }
        writeFileSync(join(dir, 'backupinfo'), text);
        // The storage is given: this hand-made config has no repository settings to open one from.
        const entries = await listBackups(config, server, new PosixStorage(join(root, 'pg')));
        assert.equal(entries.length, 1, context);
        const e = entries[0]!;
        assert.equal(e.info.id, plainId, 'listed under its directory name');
        if (e.damage !== undefined) {
          damaged++;
          assert.equal(e.info.status, 'damaged');
          assert.equal(e.complete, false);
          const refused = (err: unknown) => err instanceof BartError && /is damaged/.test(err.message);
          assert.throws(() => findBackup(entries, server, plainId), refused);
          await assert.rejects(readBackupInfo(new PosixStorage(dirname(dir)), basename(dir)), BackupInfoError);
        } else {
          assertSane(e.info, context);
        }
      }
      assert.ok(damaged > 200, `most mutations damage the file (${damaged} of 400)`);
    } finally {
      removeTree(root);
    }
    assert.deepEqual(unhandled, []);
  });

  test("in-process: VERIFY and RESTORE's manifest reader never accept a mutated manifest or stored file", async () => {
    const r = prng(SEED + 1);
    for (const id of [tarId, plainId]) {
      const dir = fx.backupDir(id);
      const storage = new PosixStorage(dirname(dir));
      const entry = { info: await readBackupInfo(storage, id), storage, key: id, dataKey: id, complete: true };
      assert.deepEqual((await verifyBackup(entry)).failures, [], 'the original verifies');
      const manifestPath = join(dir, 'manifest.jsonl');
      const original = readFileSync(manifestPath, 'utf8');
      try {
        for (let i = 0; i < MANIFEST_CASES; i++) {
          const text = mutateManifest(original, r);
          const context = `${id} manifest case ${i} (seed ${SEED})`;
          writeFileSync(manifestPath, text);
          const result = await verifyBackup(entry);
          assert.ok(result.failures.length > 0, `${context}: VERIFY passed a mutated manifest`);
          await assert.rejects(readRestoredState(storage, id), BartError, context);
        }
      } finally {
        writeFileSync(manifestPath, original);
      }
      const files = storedFiles(dir);
      // Each of these verifies the whole backup (seconds): a few suffice, the manifest cases are the many.
      for (let i = 0; i < STORED_FILE_CASES; i++) {
        const file = join(dir, pick(r, files));
        const original = readFileSync(file);
        const bytes = Buffer.from(original);
        const at = Math.floor(r() * bytes.length);
        bytes[at] ^= 1 + Math.floor(r() * 255);
        writeFileSync(file, bytes);
        try {
          const result = await verifyBackup(entry);
          assert.ok(result.failures.length > 0, `${file} byte ${at} changed (seed ${SEED}): VERIFY passed it`);
        } finally {
          writeFileSync(file, original);
        }
      }
    }
    assert.deepEqual(unhandled, []);
  });

  test('CLI: SHOW-BACKUPS, VERIFY-CHKSUM, RESTORE -i and MANAGE -l on mutated catalogs end cleanly', async () => {
    const r = prng(SEED + 2);
    const dir = fx.backupDir(plainId);
    const infoPath = join(dir, 'backupinfo');
    const manifestPath = join(dir, 'manifest.jsonl');
    const originalInfo = readFileSync(infoPath, 'utf8');
    const originalManifest = readFileSync(manifestPath, 'utf8');
    const scratch = makeTempDir('fuzz-restore');
    const ids = testUserIds();
    if (ids) spawnSync('chown', [`${ids.uid}:${ids.gid}`, scratch]);
    const clean = (what: string, res: { code: number | null; stdout: string; stderr: string }) => {
      assert.doesNotMatch(res.stdout + res.stderr, STACK, `${what}: stack trace`);
      assert.ok(res.code === 0 || res.code === 1, `${what}: exit code ${res.code}\n${res.stderr}`);
      assert.doesNotMatch(res.stderr, /unexpected failure|internal error/, what);
    };
    let restores = 0;
    try {
      for (let i = 0; i < CLI_INFO_CASES; i++) {
        const text = mutateInfo(originalInfo, r, tarId);
        let damaged: boolean;
        try {
          damaged = parseBackupInfo(text, 'x').id !== plainId;
        } catch {
          damaged = true;
        }
        writeFileSync(infoPath, text);
        const what = `backupinfo case ${i} (seed ${SEED}, damaged: ${damaged})`;
        const show = await fx.setup.bart(['SHOW-BACKUPS', '-s', fx.server, '--output', 'json']);
        clean(`SHOW-BACKUPS ${what}`, show);
        assert.equal(show.code, 0, `${what}: ${show.stderr}`);
        const listed = (JSON.parse(show.stdout) as { id: string; status: string }[]).find((b) => b.id === plainId);
        assert.ok(listed, what);
        if (damaged) assert.equal(listed.status, 'damaged', what);
        // Verifying a backup whose backupinfo is still sane reads all of it (seconds): only damaged ones here.
        if (damaged) {
          const verify = await fx.setup.bart(['VERIFY-CHKSUM', '-s', fx.server, '-i', plainId]);
          clean(`VERIFY-CHKSUM ${what}`, verify);
          assert.equal(verify.code, 1, what);
          assert.match(verify.stdout, /FAILED \(backupinfo: /, what);
          if (restores++ < CLI_RESTORES) {
            const target = join(scratch, `r${i}`);
            const restore = await fx.setup.bart(['RESTORE', '-s', fx.server, '-i', plainId, '-p', target]);
            clean(`RESTORE ${what}`, restore);
            assert.equal(restore.code, 1, what);
            assert.match(restore.stderr, /^ERROR: +backup \d+ of server pg is damaged \(/m, what);
            assert.ok(!existsSync(target), `${what}: nothing restored`);
          }
        }
        if (i % 6 === 0) {
          const manage = await fx.setup.bart(['MANAGE', '-s', fx.server, '-l', '--output', 'json']);
          clean(`MANAGE -l ${what}`, manage);
          assert.equal(manage.code, 0, what);
        }
      }
      writeFileSync(infoPath, originalInfo);
      for (let i = 0; i < CLI_MANIFEST_CASES; i++) {
        writeFileSync(manifestPath, mutateManifest(originalManifest, r));
        const what = `manifest case ${i} (seed ${SEED})`;
        const verify = await fx.setup.bart(['VERIFY-CHKSUM', '-s', fx.server, '-i', plainId]);
        clean(`VERIFY-CHKSUM ${what}`, verify);
        assert.equal(verify.code, 1, what);
        assert.match(verify.stdout, new RegExp(`${plainId}\\s+FAILED \\(manifest\\.jsonl: `), what);
      }
    } finally {
      writeFileSync(infoPath, originalInfo);
      writeFileSync(manifestPath, originalManifest);
      removeTree(scratch);
    }
    const ok = await fx.setup.bart(['VERIFY-CHKSUM', '-s', fx.server]);
    assert.equal(ok.code, 0, `the restored originals verify again: ${ok.stdout}${ok.stderr}`);
    assert.match(ok.stdout, new RegExp(`${tarId}\\s+OK`));
  });
});
