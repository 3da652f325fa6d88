import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import type { TestCluster } from './harness/cluster.js';
import { versionsUnderTest } from './harness/pg-binaries.js';
import { removeTree } from './harness/os.js';
import {
  batches,
  createRestoreSource,
  freshPath,
  startRestored,
  waitPaused,
  waitPromoted,
  type RestoreSource,
} from './harness/restore.js';

/** What the source recorded right after committing one batch of rows. */
interface Commit {
  batch: number;
  xid: string;
  /** WAL insert position after the commit. */
  lsn: string;
  /** Server clock after the commit, in UTC with an explicit offset. */
  time: string;
}

const range = (a: number, b: number) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

for (const version of versionsUnderTest()) {
  describe(`PITR on PostgreSQL ${version}`, () => {
    let src: RestoreSource;
    let b1: string;
    let b1b: string;
    const commits: Commit[] = [];

    /** One transaction writing rows of `batch`; returns what identifies its commit. */
    async function commitBatch(cluster: TestCluster, batch: number): Promise<Commit> {
      const rows = await cluster.query<{ xid: string }>(
        `WITH ins AS (INSERT INTO tx SELECT ${batch}, g FROM generate_series(1, 50) g RETURNING 1) SELECT txid_current()::text AS xid, count(*) FROM ins`,
      );
      const after = await cluster.query<{ lsn: string; time: string }>(
        `SELECT pg_current_wal_insert_lsn()::text AS lsn, to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00' AS time`,
      );
      // Keep commits apart in time, so a timestamp between two of them is unambiguous.
      await new Promise((r) => setTimeout(r, 20));
      return { batch, xid: rows[0]!.xid, lsn: after[0]!.lsn, time: after[0]!.time };
    }

    /** Restores B, starts it, returns the cluster (paused at the target or promoted) and its path. */
    async function restoreAndStart(
      args: string[],
      expectPause: boolean,
      prepare?: (path: string) => void,
    ): Promise<{ cluster: TestCluster; path: string }> {
      const path = freshPath(src, 'pitr');
      const r = await src.restore(['-p', path, '-w', '2', ...args]);
      assert.equal(r.code, 0, `RESTORE ${args.join(' ')}: ${r.stdout}\n${r.stderr}`);
      prepare?.(path);
      const cluster = await startRestored(version, path);
      try {
        if (expectPause) await waitPaused(cluster);
        else await waitPromoted(cluster);
      } catch (err) {
        await cluster.destroy();
        removeTree(path);
        throw err;
      }
      return { cluster, path };
    }

    async function expectBatches(args: string[], expected: number[], expectPause = true): Promise<void> {
      const { cluster, path } = await restoreAndStart(args, expectPause);
      try {
        assert.deepEqual(await batches(cluster), expected, `RESTORE ${args.join(' ')}\n${cluster.logTail(30)}`);
      } finally {
        await cluster.destroy();
        removeTree(path);
      }
    }

    before(async () => {
      src = await createRestoreSource(version);
      await src.cluster.query('CREATE TABLE tx (batch int, id int, PRIMARY KEY (batch, id))');
      b1 = await src.backup(['-F', 't', '--compress', 'gzip']);
      for (let batch = 1; batch <= 8; batch++) {
        commits.push(await commitBatch(src.cluster, batch));
        if (batch === 5) await src.cluster.query(`SELECT pg_create_restore_point('after_batch_5')`);
      }
      // A newer backup: a time target without -i must still pick b1, the newest that ended before it.
      b1b = await src.backup(['-F', 't', '--compress', 'lz4']);
      await src.archiveCurrentWal();
    });

    after(async () => {
      await src?.destroy();
    });

    test('to a timestamp, an xid (exclusive) and an LSN: exactly the transactions committed up to it', async () => {
      await expectBatches(['-g', commits[2]!.time], range(1, 3));
      await expectBatches(
        ['-i', b1, '-x', commits[4]!.xid, '--target-exclusive', '--target-action', 'promote'],
        range(1, 4),
        false,
      );
      // BART's spelling of the same thing.
      await expectBatches(
        ['-i', b1, '-x', commits[4]!.xid, '--target-inclusive', 'false', '--target-action', 'promote'],
        range(1, 4),
        false,
      );
      await expectBatches(['-i', b1, '--target-lsn', commits[1]!.lsn], range(1, 2));
    });

    test('targets before the end of the backup are refused, naming the earliest reachable point; PATH untouched', async () => {
      const path = freshPath(src, 'early');
      // Without -i the oldest backup is the candidate for so early a time: the error names its end.
      let r = await src.restore(['-p', path, '-g', '2020-01-01 00:00:00+00']);
      assert.notEqual(r.code, 0);
      assert.match(
        r.stderr,
        new RegExp(
          `ERROR: +recovery target time 2020-01-01 00:00:00\\+00 is before the end of backup ${b1} .*the earliest time this backup can reach is \\d{4}-`,
        ),
      );
      r = await src.restore(['-i', b1b, '-p', path, '-g', commits[2]!.time]);
      assert.match(r.stderr, new RegExp(`ERROR: +recovery target time .* is before the end of backup ${b1b} `));
      r = await src.restore(['-i', b1, '-p', path, '--target-lsn', '0/10']);
      assert.notEqual(r.code, 0);
      assert.match(
        r.stderr,
        /ERROR: +recovery target LSN 0\/10 is before the end of backup \d+ \(STOP LSN [0-9A-F]+\/[0-9A-F]+\): the earliest LSN/,
      );
      r = await src.restore(['-i', b1, '-p', path, '-t', '7']);
      assert.match(
        r.stderr,
        /ERROR: +-t\/--target-tli 7: timeline history file 00000007\.history is not in the archive/,
      );
      assert.equal(existsSync(path), false);
    });

    test('to a restore point; then timelines: promote, write, back up on timeline 2, restore with -t', async () => {
      // Restore to the restore point and let the new primary archive into the same catalog.
      const { cluster: r1, path: r1Path } = await restoreAndStart(
        ['-i', b1, '--target-name', 'after_batch_5'],
        true,
        (path) =>
          appendFileSync(
            join(path, 'postgresql.auto.conf'),
            `archive_mode = 'on'\narchive_command = 'cp %p ${src.archivePath}/%f'\n`,
          ),
      );
      try {
        assert.deepEqual(await batches(r1), range(1, 5), 'paused at restore point after_batch_5');
        await r1.query('SELECT pg_wal_replay_resume()');
        await waitPromoted(r1);
        await src.waitArchived('00000002.history');
        await commitBatch(r1, 101);
        await commitBatch(r1, 102);
        src.configure(r1);
        const b2 = await src.backup(['-F', 'p']);
        await commitBatch(r1, 103);
        await src.archiveCurrentWal(r1);
        const tl2 = [...range(1, 5), 101, 102, 103];

        // The timeline-1 backup follows timeline 2 when asked, or stays on timeline 1.
        await expectBatches(['-i', b1, '-t', '2'], tl2, false);
        await expectBatches(['-i', b1, '-t', '1'], range(1, 8), false);
        // The timeline-2 backup restores what timeline 2 holds.
        await expectBatches(['-i', b2], tl2, false);

        const path = freshPath(src, 'tli');
        const r = await src.restore(['-i', b2, '-p', path, '-t', '1']);
        assert.match(r.stderr, /ERROR: +-t\/--target-tli 1 is older than the timeline of backup \d+ \(2\)/);
        assert.equal(existsSync(path), false);
      } finally {
        await r1.destroy();
        removeTree(r1Path);
      }
    });
  });
}
