/**
 * Fuzz test: real WAL mutated at random. The decoder throws nothing but WalDecodeError, always
 * terminates, and every record it yields has a correct CRC and equals the record at that LSN in
 * the intact WAL. Runs PGBART_FUZZ_SECONDS seconds (default 3).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { crc32c } from '@node-rs/crc32';
import { makeTempDir, removeTree, testUserIds } from './harness/os.js';
import { prng as rng } from './harness/prng.js';
import { LONG_RUN, sized } from './harness/test-size.js';
import { chownSync } from 'node:fs';
import { WalDecoder } from '../src/wal/decoder.js';
import { WalDecodeError } from '../src/wal/decode-error.js';
import type { WalRecord } from '../src/wal/record.js';
import { makeArchivedWal } from './harness/wal-fixture.js';

const SEG = 16 * 1024 * 1024;

/** Identity of a record's content: its stored CRC plus length and block count. */
function signature(r: WalRecord): string {
  return `${r.buffer.readUInt32LE(r.offset + 20)}:${r.totalLength}:${r.blockCount}:${r.blockCount > 0 ? r.blockNo[0] : -1}`;
}

/**
 * Decodes the first segment, finishing its last record from the second (as the scanner does).
 * With `prefix`, only the first `prefix` bytes of the first segment, ending there as WAL would
 * (quick iterations for mutations near the start).
 */
function decodeAll(
  segs: Buffer[],
  lengths: number[],
  segNos: number[],
  onRecord: (r: WalRecord) => void,
  prefix?: number,
): void {
  const d = new WalDecoder({ onRecord, timeline: 1, allowEndOfWal: prefix !== undefined });
  const r = d.feedSegment(segs[0]!, prefix ?? lengths[0]!, segNos[0]!, 'seg0');
  if (r.status === 'needNext') d.feedSegment(segs[1]!, lengths[1]!, segNos[1]!, 'seg1', { finishPendingOnly: true });
}

test('fuzz: mutated WAL gives only WalDecodeError, terminates, never yields a record with a bad CRC', async () => {
  const seconds = Number(process.env.PGBART_FUZZ_SECONDS ?? sized(3, 30));
  const dir = makeTempDir('fuzz');
  try {
    const arch = join(dir, 'a');
    mkdirSync(arch);
    const ids = testUserIds();
    if (ids) chownSync(arch, ids.uid, ids.gid);
    const paths = (await makeArchivedWal(arch, 2)).slice(0, 2);
    const originals = await Promise.all(paths.map((p) => readFile(p)));
    const segNos = paths.map((p) => Number(BigInt('0x' + basename(p).slice(16, 24))));
    assert.equal(segNos[1], segNos[0]! + 1, 'consecutive segments');
    const baseline = new Map<number, string>();
    // When the first segment ends inside a record, its stitching from the second is fuzzed too.
    decodeAll(
      originals,
      originals.map((o) => o.length),
      segNos,
      (r) => baseline.set(r.lsn, signature(r)),
    );
    assert.ok(baseline.size > 1000);
    // Segments at odd addresses (the decoder reads words: it decodes an aligned copy of them)
    // give the very same records.
    for (const shift of [1, 2, 3]) {
      const unaligned = originals.map((o) => {
        const b = Buffer.alloc(o.length + shift).subarray(shift);
        o.copy(b);
        return b;
      });
      const seen = new Map<number, string>();
      decodeAll(
        unaligned,
        unaligned.map((o) => o.length),
        segNos,
        (r) => seen.set(r.lsn, signature(r)),
      );
      assert.deepEqual(seen, baseline, `segments shifted by ${shift} bytes decode alike`);
    }

    // Read lazily (the scanner's way: the decoder asks for each chunk before it reads it): bytes
    // not yet asked for are garbage here, so any read ahead of `fill` would change the records.
    {
      const garbage = originals.map((o) => Buffer.alloc(o.length, 0xee));
      const fills: number[] = [];
      const seen = new Map<number, string>();
      const lazy = new WalDecoder({ onRecord: (r) => seen.set(r.lsn, signature(r)), timeline: 1 });
      let have = 0;
      const fill = (upTo: number) => {
        assert.ok(upTo > have && upTo <= originals[0]!.length, `fill(${upTo}) after ${have}`);
        originals[0]!.copy(garbage[0]!, have, have, upTo);
        fills.push(upTo);
        have = upTo;
      };
      const r = lazy.feedSegment(garbage[0]!, originals[0]!.length, segNos[0]!, 'seg0', { fill });
      if (r.status === 'needNext')
        lazy.feedSegment(originals[1]!, originals[1]!.length, segNos[1]!, 'seg1', { finishPendingOnly: true });
      assert.deepEqual(seen, baseline, 'a lazily read segment decodes alike');
      assert.ok(fills.length > 10, `read in chunks as decoding went (${fills.length} reads)`);
    }

    // A fixed seed in npm test (a failure replays as is), a fresh one in npm run test:long.
    const seed = Number(process.env.PGBART_FUZZ_SEED ?? (LONG_RUN ? Date.now() % 1e9 : 20261124));
    const rand = rng(seed);
    const int = (n: number) => Math.floor(rand() * n);
    const work = originals.map((o) => Buffer.from(o));
    const until = Date.now() + seconds * 1000;
    let iterations = 0;
    let errors = 0;
    let yielded = 0;
    const PREFIX = 1024 * 1024;
    let lastQuick = false;
    // Bounded by time, but at least 10 iterations so a loaded machine still fuzzes something.
    while (Date.now() < until || iterations < 10) {
      iterations++;
      // Undo the previous mutation (a quick one touched at most the first PREFIX + 64 KB).
      if (lastQuick) originals[0]!.copy(work[0]!, 0, 0, PREFIX + 65536);
      else for (let i = 0; i < work.length; i++) originals[i]!.copy(work[i]!);
      const lengths = work.map((w) => w.length);
      // Mostly the first segment; the second only where the stitched record continues.
      const target = rand() < 0.85 ? 0 : 1;
      const hot = rand() < 0.8;
      const pos = () =>
        target === 1 ? int(64 * 1024) : hot ? (rand() < 0.5 ? int(256 * 1024) : SEG - 1 - int(64 * 1024)) : int(SEG);
      const qpos = () => int(PREFIX);
      // Iteration 1 breaks a page header: the decoder must notice (checks the check itself).
      const kind = iterations === 1 ? 6 : int(6);
      // Most iterations decode only the first megabyte (fast); some the whole segment and the
      // stitching into the next one.
      const quick = iterations > 1 && target === 0 && rand() < 0.75;
      lastQuick = quick;
      const w = work[target]!;
      const what: string[] = [];
      const at = quick ? qpos : pos;
      if (kind === 6) {
        w.writeUInt16LE(0xbeef, 8192);
        what.push('magic@8192');
      } else if (kind === 0) {
        for (let k = 1 + int(8); k > 0; k--) {
          const p = at();
          w[p] ^= 1 << int(8);
          what.push(`flip@${p}`);
        }
      } else if (kind === 1) {
        const p = at() & ~3;
        w.writeUInt32LE(int(2 ** 32), p);
        what.push(`u32@${p}`);
      } else if (kind === 2) {
        lengths[target] = quick ? int(PREFIX) : int(SEG);
        what.push(`truncate@${lengths[target]}`);
      } else if (kind === 3) {
        const p = at();
        const n = 1 + int(20000);
        w.fill(0, p, Math.min(SEG, p + n));
        what.push(`zero@${p}+${n}`);
      } else if (kind === 4) {
        const pages = (quick ? PREFIX : SEG) / 8192;
        const a = int(pages) * 8192;
        const b = int(pages) * 8192;
        w.copy(w, a, b, b + 8192);
        what.push(`page ${b}->${a}`);
      } else {
        const p = at();
        w[p] = 0xff;
        w[p + 1] = 0xff;
        what.push(`ff@${p}`);
      }
      try {
        decodeAll(
          work,
          lengths,
          segNos,
          (r) => {
            yielded++;
            // Independent CRC check over the bytes the decoder handed out.
            const body = crc32c(r.buffer.subarray(r.offset + 24, r.offset + r.totalLength));
            const crc = crc32c(r.buffer.subarray(r.offset, r.offset + 20), body);
            assert.equal(
              crc,
              r.buffer.readUInt32LE(r.offset + 20),
              `seed ${seed} iteration ${iterations} (${what.join(',')}): record at ${r.lsn} yielded with a bad CRC`,
            );
            assert.equal(
              signature(r),
              baseline.get(r.lsn),
              `seed ${seed} iteration ${iterations} (${what.join(',')}): record at ${r.lsn} differs from the intact WAL`,
            );
          },
          quick ? Math.min(PREFIX, lengths[0]!) : undefined,
        );
      } catch (err) {
        if (err instanceof WalDecodeError) {
          errors++;
          continue;
        }
        throw new Error(
          `seed ${seed} iteration ${iterations} (${target}:${what.join(',')}): ${err instanceof Error ? err.stack : String(err)}`,
        );
      }
    }
    assert.ok(errors > 0, 'the broken page header of iteration 1 was detected');
    process.stdout.write(
      `# fuzz: seed ${seed}, ${iterations} iterations, ${errors} decode errors, ${yielded} records yielded\n`,
    );
  } finally {
    removeTree(dir);
  }
});
