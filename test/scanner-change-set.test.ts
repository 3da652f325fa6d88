/**
 * MBM format and change-set merging without a cluster: round trip of every field and event kind,
 * corruption detection, truncation limits, merging across a timeline switch, and the report of
 * segments without MBM.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeTempDir, removeTree } from './harness/os.js';
import { decodeMbm, encodeMbm, readMbmFile } from '../src/scanner/mbm-format.js';
import { mbmFileName, parseMbmFileName } from '../src/scanner/mbm-name.js';
import { BlockMapBuilder, forkKey, type ModifiedBlockMap } from '../src/scanner/modified-block-map.js';
import { isBlockModified, loadChangeSet } from '../src/scanner/change-set.js';
import { mbmToJson, mbmToText } from '../src/scanner/mbm-print.js';
import { parseTimelineHistory, timelineOfSegment } from '../src/wal/timeline-history.js';
import { writeFileAtomic } from '../src/util/fs-atomic.js';
import { BartError } from '../src/util/errors.js';
import { parseLsn } from '../src/util/lsn.js';

const SEG = 16 * 1024 * 1024;

function sampleMap(): ModifiedBlockMap {
  const b = new BlockMapBuilder();
  b.addEvent({ kind: 'relation-create', lsn: 0x1000100, rel: { spcOid: 1663, dbOid: 5, relNumber: 16500 }, fork: 0 });
  b.addEvent({
    kind: 'relation-truncate',
    lsn: 0x1000200,
    rel: { spcOid: 1663, dbOid: 5, relNumber: 16384 },
    blocks: 70000,
    forks: [0, 1, 2],
  });
  b.addEvent({
    kind: 'relation-drop',
    lsn: 0x1000300,
    rels: [{ spcOid: 1663, dbOid: 5, relNumber: 16600 }],
    via: 'abort-prepared',
  });
  b.addEvent({
    kind: 'database-create',
    lsn: 0x1000400,
    dbOid: 16700,
    spcOid: 1663,
    strategy: 'file_copy',
    srcDbOid: 1,
    srcSpcOid: 1663,
  });
  b.addEvent({ kind: 'database-create', lsn: 0x1000500, dbOid: 16701, spcOid: 1663, strategy: 'wal_log' });
  b.addEvent({ kind: 'database-drop', lsn: 0x1000600, dbOid: 16700, spcOids: [1663, 16800] });
  b.addEvent({ kind: 'tablespace-create', lsn: 0x1000700, spcOid: 16800, path: '/srv/tablespace/é' });
  b.addEvent({ kind: 'tablespace-drop', lsn: 0x1000800, spcOid: 16800 });
  return {
    timeline: 1,
    startLsn: 0x1000028n,
    endLsn: 0x2000000n,
    systemId: 7312345678901234567n,
    segmentSize: SEG,
    walMagic: 0xd110,
    endedWithSwitch: true,
    records: 1234,
    relations: b.relations(),
    events: b.events,
  };
}

test('MBM: every field and event survives encode/decode; limits from create, truncate, drop', () => {
  const m = sampleMap();
  const rel = (r: number, f: number) => m.relations.find((x) => x.relNumber === r && x.fork === f);
  assert.equal(rel(16500, 0)!.limit, 0);
  assert.equal(rel(16384, 0)!.limit, 70000);
  assert.equal(rel(16384, 2)!.limit, 2, 'VM limit: 70000 heap blocks / 32672 per VM page');
  assert.equal(rel(16384, 1)!.limit, 0, 'FSM truncation: whole fork');
  for (const f of [0, 1, 2, 3]) assert.equal(rel(16600, f)!.limit, 0, `dropped relation fork ${f}`);
  m.relations.push({
    spcOid: 1664,
    dbOid: 0,
    relNumber: 1262,
    fork: 0,
    limit: null,
    blocks: Uint32Array.from([0, 1, 2, 7, 9, 10, 4000000000]),
  });
  const back = decodeMbm(encodeMbm(m), 'x');
  assert.deepEqual(back, m);
  const json = JSON.parse(mbmToJson(back)) as {
    relations: Array<{ fork: string; blocks: number[] }>;
    events: unknown[];
  };
  assert.equal(json.events.length, 6);
  assert.deepEqual(json.relations.at(-1)!.blocks, [0, 1, 2, 7, 9, 10, 4000000000]);
  assert.match(mbmToText(back, 'f.mbm'), /1664\s+0\s+1262\s+main\s+-\s+0-2,7,9-10,4000000000/);
});

test('MBM: corrupted, truncated or foreign files are refused with file and offset', () => {
  const good = encodeMbm(sampleMap());
  const flip = Buffer.from(good);
  flip[100] ^= 1;
  assert.throws(
    () => decodeMbm(flip, 'a.mbm'),
    (e: Error) => e instanceof BartError && /"a\.mbm" at byte offset \d+: checksum mismatch/.test(e.message),
  );
  assert.throws(
    () => decodeMbm(good.subarray(0, good.length - 9), 'b.mbm'),
    /"b\.mbm" at byte offset 64: recorded length/,
  );
  const v2 = Buffer.from(good);
  v2.writeUInt16LE(2, 8);
  assert.throws(() => decodeMbm(v2, 'c.mbm'), /unsupported format version 2/);
  assert.throws(() => decodeMbm(Buffer.alloc(200), 'd.mbm'), /bad magic/);
});

test('MBM names and timeline histories', () => {
  const name = mbmFileName(2, 0x3000028n, 0x4000000n);
  assert.equal(name, '00000002_0000000003000028_0000000004000000.mbm');
  assert.deepEqual(parseMbmFileName(`/x/${name}`), { timeline: 2, startLsn: 0x3000028n, endLsn: 0x4000000n });
  assert.equal(parseMbmFileName('000000010000000000000001'), undefined);
  const h = parseTimelineHistory(
    '1\t0/3800000\tno recovery target specified\n\n2\t0/5000000\tat restore point "x"\n',
    3,
    'h',
  );
  assert.deepEqual(
    h.map((s) => s.timeline),
    [1, 2, 3],
  );
  assert.equal(timelineOfSegment(h, 2n, SEG), 1);
  assert.equal(timelineOfSegment(h, 3n, SEG), 2, 'the segment holding the switch point comes from the new timeline');
  assert.equal(timelineOfSegment(h, 4n, SEG), 2);
  assert.equal(timelineOfSegment(h, 5n, SEG), 3);
  assert.throws(() => parseTimelineHistory('1\tzz\tx\n', 2, 'bad.history'), /bad\.history", line 1/);
});

test('change set: merges across a timeline switch, unions blocks, lowest limit, reports missing segments', async () => {
  const dir = makeTempDir('changeset');
  try {
    writeFileSync(join(dir, '00000002.history'), '1\t0/3800000\tno recovery target specified\n');
    const put = async (
      tli: number,
      segNo: number,
      rels: Array<[number, number | null, number[]]>,
      events: ModifiedBlockMap['events'] = [],
    ) => {
      const m: ModifiedBlockMap = {
        timeline: tli,
        startLsn: BigInt(segNo * SEG + 40),
        endLsn: BigInt((segNo + 1) * SEG),
        systemId: 42n,
        segmentSize: SEG,
        walMagic: 0xd116,
        endedWithSwitch: false,
        records: 1,
        events,
        relations: rels.map(([rel, limit, blocks]) => ({
          spcOid: 1663,
          dbOid: 5,
          relNumber: rel,
          fork: 0,
          limit,
          blocks: Uint32Array.from(blocks),
        })),
      };
      await writeFileAtomic(join(dir, mbmFileName(tli, m.startLsn, m.endLsn)), encodeMbm(m));
    };
    await put(1, 1, [[100, null, [1, 2]]]);
    await put(1, 2, [
      [100, 50, [9]],
      [200, null, [0]],
    ]);
    await put(1, 3, [[300, null, [666]]]); // timeline 1 after the switch point: not on timeline 2's history
    await put(
      2,
      3,
      [[100, 20, [3, 1]]],
      [
        {
          kind: 'database-create',
          lsn: 3 * SEG + 100,
          dbOid: 777,
          spcOid: 1663,
          strategy: 'file_copy',
          srcDbOid: 1,
          srcSpcOid: 1663,
        },
      ],
    );
    await put(2, 4, [[200, null, [5]]]);
    const cs = await loadChangeSet(dir, {
      timeline: 2,
      startLsn: parseLsn('0/1000100'),
      endLsn: parseLsn('0/4000100'),
    });
    assert.deepEqual(cs.missingSegments, []);
    assert.equal(cs.mbmFiles.length, 4);
    assert.equal(cs.relations.has(forkKey(1663, 5, 300, 0)), false, 'the abandoned timeline is not used');
    const r100 = cs.relations.get(forkKey(1663, 5, 100, 0))!;
    assert.deepEqual(Array.from(r100.blocks), [1, 2, 3, 9]);
    assert.equal(r100.limit, 20);
    assert.ok(isBlockModified(cs, 1663, 5, 100, 0, 2));
    assert.ok(!isBlockModified(cs, 1663, 5, 100, 0, 4));
    assert.ok(isBlockModified(cs, 1663, 5, 100, 0, 25), 'past the limit');
    assert.ok(isBlockModified(cs, 1663, 777, 1, 0, 0), 'a database created in the range is new as a whole');
    assert.deepEqual(cs.createdDatabases, [{ spcOid: 1663, dbOid: 777 }]);
    // An end LSN just past the long page header of a segment (a backup's start after the
    // segment switch) does not need that segment.
    const cs1 = await loadChangeSet(dir, {
      timeline: 2,
      startLsn: parseLsn('0/1000028'),
      endLsn: parseLsn('0/5000028'),
    });
    assert.deepEqual(cs1.missingSegments, []);
    assert.equal(cs1.mbmFiles.length, 4);
    // A range reaching segments without MBMs reports them (and still merges the others).
    const cs2 = await loadChangeSet(dir, {
      timeline: 2,
      startLsn: parseLsn('0/1000100'),
      endLsn: parseLsn('0/6000100'),
    });
    assert.deepEqual(cs2.missingSegments, ['000000020000000000000005', '000000020000000000000006']);
    // Another cluster's MBM in the archive is refused.
    const other = encodeMbm({
      ...(await readMbmFile(join(dir, mbmFileName(2, BigInt(4 * SEG + 40), BigInt(5 * SEG))))),
      systemId: 43n,
    });
    writeFileSync(join(dir, mbmFileName(2, BigInt(4 * SEG + 40), BigInt(5 * SEG))), other);
    await assert.rejects(
      loadChangeSet(dir, { timeline: 2, startLsn: parseLsn('0/1000100'), endLsn: parseLsn('0/5000000') }),
      /another cluster/,
    );
    assert.ok(readFileSync(join(dir, '00000002.history'), 'utf8').length > 0);
  } finally {
    removeTree(dir);
  }
});
