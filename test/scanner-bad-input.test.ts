/**
 * Bad WAL: truncated, zero-filled, wrong version, wrong timeline and CRC-corrupted files give an
 * error naming the file and byte offset and no MBM; the daemon carries on with other files and
 * servers (and scans .gz files).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync, chownSync, existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { createBartSetup } from './harness/bart.js';
import { makeTempDir, removeTree, testUserIds } from './harness/os.js';
import { decodeWalFiles } from '../src/wal/decode-files.js';
import { parseMbmFileName } from '../src/scanner/mbm-name.js';
import { makeArchivedWal } from './harness/wal-fixture.js';
import { waitFor } from './harness/wait.js';
import { bartScanner, killScanner } from './harness/scanner.js';

const SEG = 16 * 1024 * 1024;

function chownTree(dir: string): void {
  const ids = testUserIds();
  if (!ids) return;
  chownSync(dir, ids.uid, ids.gid);
  for (const n of readdirSync(dir)) chownSync(join(dir, n), ids.uid, ids.gid);
}

function mbms(dir: string): string[] {
  return readdirSync(dir).filter((n) => parseMbmFileName(n) !== undefined);
}

/** A record of the segment lying wholly inside one page, at least `minLen` long: its file offset. */
async function recordInsidePage(path: string, minLen: number): Promise<number> {
  const segStart =
    Number(BigInt('0x' + basename(path).slice(16, 24)) * BigInt(SEG)) +
    Number(BigInt('0x' + basename(path).slice(8, 16)) * 0x100000000n);
  let found = -1;
  await decodeWalFiles([path], (r) => {
    const off = r.lsn - segStart;
    if (found < 0 && off > 100_000 && r.totalLength >= minLen && (off % 8192) + r.totalLength < 8192) found = off;
  });
  assert.ok(found > 0);
  return found;
}

test('bart-scanner: bad WAL files are refused with file and offset, no MBM; the daemon carries on', async () => {
  const work = makeTempDir('badwal');
  const setup = createBartSetup();
  try {
    const src = join(work, 'src');
    mkdirSync(src);
    chownTree(src);
    const segs = await makeArchivedWal(src, 4);
    assert.ok(segs.length >= 4, `segments: ${segs.length}`);
    const victim = segs[1]!;
    const good = readFileSync(victim);
    const crcOff = await recordInsidePage(victim, 60);

    const cases: Array<{ name: string; data: Buffer; offset: number; reason: RegExp }> = [];
    cases.push({ name: 'truncated', data: good.subarray(0, 1_000_000), offset: 1_000_000, reason: /truncated/ });
    cases.push({ name: 'zero-filled', data: Buffer.alloc(SEG), offset: 0, reason: /invalid magic number 0x0000/ });
    const badMagic = Buffer.from(good);
    badMagic.writeUInt16LE(0x1234, 3 * 8192);
    cases.push({ name: 'unknown version', data: badMagic, offset: 3 * 8192, reason: /invalid magic number 0x1234/ });
    const otherVersion = Buffer.from(good);
    otherVersion.writeUInt16LE(0xd113, 0);
    cases.push({
      name: 'another version',
      data: otherVersion,
      offset: 8192,
      reason: /differs from the one seen before/,
    });
    const badTli = Buffer.from(good);
    badTli.writeUInt32LE(2, 5 * 8192 + 4);
    cases.push({
      name: 'wrong timeline',
      data: badTli,
      offset: 5 * 8192 + 4,
      reason: /timeline 2, newer than the file's timeline 1/,
    });
    const badCrc = Buffer.from(good);
    badCrc[crcOff + 30] ^= 0x40;
    cases.push({ name: 'CRC mismatch', data: badCrc, offset: crcOff, reason: /checksum/ });

    for (const c of cases) {
      const dir = join(work, c.name.replace(/ /g, '-'));
      mkdirSync(dir);
      const path = join(dir, basename(victim));
      writeFileSync(path, c.data);
      // The next segment sits next to it, as in an archive.
      copyFileSync(segs[2]!, join(dir, basename(segs[2]!)));
      chownTree(dir);
      const r = await bartScanner(setup.configPath, [path]);
      assert.notEqual(r.code, 0, `${c.name}: exit code`);
      assert.ok(
        r.stderr.includes(`"${path}" at byte offset ${c.offset} `),
        `${c.name}: names file and offset ${c.offset}: ${r.stderr}`,
      );
      assert.match(r.stderr, c.reason, c.name);
      assert.match(r.stderr, /^ERROR: /m);
      assert.deepEqual(mbms(dir), [], `${c.name}: no MBM written`);
    }
    // The intact file scans fine by hand.
    const okDir = join(work, 'intact');
    mkdirSync(okDir);
    for (const s of segs.slice(1, 3)) copyFileSync(s, join(okDir, basename(s)));
    chownTree(okDir);
    const ok = await bartScanner(setup.configPath, [join(okDir, basename(victim))]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(mbms(okDir).length, 1);

    // The daemon: server a has the CRC-corrupted segment among good ones, server b only good ones
    // (one gzip-compressed). Everything good gets its MBM; the bad file is logged with its offset.
    const archA = join(work, 'arch-a');
    const archB = join(work, 'arch-b');
    mkdirSync(archA);
    mkdirSync(archB);
    for (const s of segs) {
      copyFileSync(s, join(archA, basename(s)));
      if (s === segs[2]) writeFileSync(join(archB, `${basename(s)}.gz`), gzipSync(readFileSync(s)));
      else copyFileSync(s, join(archB, basename(s)));
    }
    writeFileSync(join(archA, basename(victim)), badCrc);
    chownTree(archA);
    chownTree(archB);
    const section = (name: string, arch: string) =>
      `[${name}]\nhost = 127.0.0.1\nport = 5999\nuser = postgres\ncluster_owner = ${testUserIds() ? 'postgres' : process.env.USER}\nallow_incremental_backups = enabled\narchive_path = ${arch}\n`;
    setup.writeConfig(readFileSync(setup.configPath, 'utf8') + '\n' + section('a', archA) + '\n' + section('b', archB));
    const started = await bartScanner(setup.configPath, ['--daemon']);
    assert.equal(started.code, 0, started.stderr);
    // Each good segment gets its MBM: all of B's, all but the bad one of A's.
    const allGood = () => mbms(archB).length === segs.length && mbms(archA).length === segs.length - 1;
    await waitFor('MBMs of every good segment', allGood, { timeoutMs: 30_000 });
    const segEndOf = (p: string) => (BigInt('0x' + basename(p).slice(16, 24)) + 1n) * BigInt(SEG);
    assert.ok(
      !mbms(archA).some((m) => parseMbmFileName(m)!.endLsn === segEndOf(victim)),
      'no MBM for the corrupted segment',
    );
    const log = readFileSync(join(setup.dir, 'bart_scanner.log'), 'utf8');
    assert.match(
      log,
      new RegExp(`no MBM for ${basename(victim)}: invalid WAL in ".*${basename(victim)}" at byte offset ${crcOff} `),
    );
    const stop = await bartScanner(setup.configPath, ['STOP']);
    assert.equal(stop.code, 0, stop.stderr);
    assert.equal(existsSync(join(setup.dir, 'bart_scanner.pid')), false);
  } finally {
    killScanner(setup.dir);
    setup.cleanup();
    removeTree(work);
  }
});
