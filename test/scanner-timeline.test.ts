/**
 * A timeline switch (archive recovery that ends with promotion): the new timeline's first
 * segment starts with pages of the old timeline; MBMs of both timelines merge along the
 * history file into a change set holding the blocks written before and after the switch.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chownSync, readdirSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { withCluster, type TestCluster } from './harness/cluster.js';
import { makeTempDir, removeTree, testUserIds } from './harness/os.js';
import { ensureMbms } from '../src/scanner/ensure-mbms.js';
import { isBlockModified, loadChangeSet } from '../src/scanner/change-set.js';
import { formatLsn, parseLsn, type Lsn } from '../src/util/lsn.js';
import { archiveCommand } from './harness/wal-workload.js';
import { waitFor } from './harness/wait.js';

async function lsn(c: TestCluster): Promise<Lsn> {
  return parseLsn(String(await c.scalar('SELECT pg_current_wal_insert_lsn()::text')));
}

async function blocks(c: TestCluster, where: string): Promise<number[]> {
  const r = await c.query<{ b: number }>(`SELECT DISTINCT (ctid::text::point)[0]::int AS b FROM tl WHERE ${where}`);
  return r.map((x) => x.b);
}

test('scanner across a timeline switch: MBMs of timelines 1 and 2 merge along the history', async () => {
  const archive = makeTempDir('tl-archive');
  try {
    await withCluster(
      { version: 15, conf: { archive_mode: 'on', archive_command: archiveCommand(archive) } },
      async (c) => {
        await c.query(`CREATE TABLE tl (id int, pad text) WITH (fillfactor = 50)`);
        await c.query(`INSERT INTO tl SELECT g, repeat('x', 100) FROM generate_series(1, 10000) g`);
        await c.query(`VACUUM (FREEZE) tl`);
        const rel = await c.query<{ db: number; rel: number }>(
          `SELECT (SELECT oid FROM pg_database WHERE datname = current_database())::int AS db, pg_relation_filenode('tl')::int AS rel`,
        );
        const { db, rel: relNo } = rel[0]!;
        await c.switchWal();
        const start = await lsn(c);
        await c.query(`UPDATE tl SET pad = 'before' WHERE id % 61 = 0`);
        const before = await blocks(c, 'id % 61 = 0');
        // A record from here to 1 MB past the next segment boundary: the last complete segment of
        // timeline 1 ends inside it, and its continuation lives only in the segment where the
        // timeline ends (the .partial file, or timeline 2's copy of it).
        const here = Number(await lsn(c));
        const boundary = (Math.floor(here / 16777216) + 1) * 16777216;
        await c.query(`SELECT pg_logical_emit_message(true, 'tl', repeat('M', ${boundary - here + 1024 * 1024}))`);
        // Archive recovery may delete completed segments the archiver had not sent yet: wait first.
        const complete = String(await c.scalar(`SELECT pg_walfile_name('${formatLsn(BigInt(here))}')`));
        await waitFor(`archiving of ${complete}`, () => existsSync(join(archive, complete)), { timeoutMs: 30_000 });
        // Leave the last records of timeline 1 in a segment that is not complete (an immediate
        // stop does not switch segments, a clean one does when archiving): the switch happens in
        // its middle.
        await c.stop('immediate');
        writeFileSync(join(c.dataDir, 'recovery.signal'), '');
        const ids = testUserIds();
        if (ids) chownSync(join(c.dataDir, 'recovery.signal'), ids.uid, ids.gid);
        c.writeConf({ restore_command: `'cp ${archive}/%f %p'` });
        await c.start();
        const promoted = async () => (await c.scalar('SELECT pg_is_in_recovery()')) === false;
        await waitFor('promotion', promoted, { timeoutMs: 30_000 });
        const tli = Number(await c.scalar('SELECT timeline_id FROM pg_control_checkpoint()'));
        assert.equal(tli, 2);
        await c.query(`UPDATE tl SET pad = 'after' WHERE id % 59 = 0`);
        const after = await blocks(c, 'id % 59 = 0');
        const end = await lsn(c);
        const last = await c.switchWal();
        const archived = () => existsSync(join(archive, last)) && existsSync(join(archive, '00000002.history'));
        await waitFor(`archiving of ${last}`, archived, { timeoutMs: 30_000 });

        const req = { timeline: 2, startLsn: start, endLsn: end };
        // The archiver sends the old timeline's last complete segment after the crash in no
        // particular order: wait until everything the range needs is there and scanned.
        let ensured = await ensureMbms(archive, req);
        await waitFor('MBMs of the range', async () => (ensured = await ensureMbms(archive, req)).complete, {
          timeoutMs: 30_000,
          details: () => JSON.stringify(ensured),
        });
        assert.deepEqual(ensured.errors, []);
        const cs = await loadChangeSet(archive, req);
        assert.deepEqual(cs.missingSegments, []);
        assert.ok(
          cs.mbmFiles.some((f) => f.includes('/00000002_')),
          'timeline 2 MBMs used',
        );
        assert.ok(
          cs.mbmFiles.some((f) => f.includes('/00000001_')),
          'timeline 1 MBM (segment ending inside the 20 MB record) used',
        );
        for (const b of [...before, ...after]) assert.ok(isBlockModified(cs, 1663, db, relNo, 0, b), `block ${b}`);
        assert.ok(
          readdirSync(archive).some((n) => n.endsWith('.partial')),
          'the old timeline left a .partial segment',
        );
      },
    );
  } finally {
    removeTree(archive);
  }
});
