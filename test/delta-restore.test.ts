import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  truncateSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { versionsUnderTest } from './harness/pg-binaries.js';
import { TestCluster } from './harness/cluster.js';
import { contentSnapshot, createIncrementalSource, relationPath, takeBackup } from './harness/incremental.js';
import { removeTree, testUserIds } from './harness/os.js';
import { freshPath, snapshot, startRestored, waitPromoted, type RestoreSource } from './harness/restore.js';
import { TestSshd } from './harness/sshd.js';

/** Bytes from formatBytes() output (`12.34 MB`). */
function parseBytes(n: string, unit: string): number {
  const units = ['bytes', 'kB', 'MB', 'GB', 'TB'];
  return Number(n) * 1024 ** units.indexOf(unit);
}

/** What a delta RESTORE reports: bytes written and kept. */
function deltaSummary(stdout: string): { wrote: number; kept: number } {
  const m = /delta restore: wrote ([\d.]+) (bytes|kB|MB|GB), kept ([\d.]+) (bytes|kB|MB|GB)/.exec(stdout);
  assert.ok(m, `no delta summary in:\n${stdout}`);
  return { wrote: parseBytes(m[1]!, m[2]!), kept: parseBytes(m[3]!, m[4]!) };
}

/** Bytes a plain RESTORE reports as restored. */
function fullSummary(stdout: string): number {
  const m = /restored \d+ files, ([\d.]+) (bytes|kB|MB|GB)/.exec(stdout);
  assert.ok(m, `no restore summary in:\n${stdout}`);
  return parseBytes(m[1]!, m[2]!);
}

/**
 * Every entry of a tree with its type, file modes and content digests; postgresql.auto.conf names
 * the restore path (restore_command with -c), so only its presence counts.
 */
function treeDigest(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (rel: string) => {
    for (const name of readdirSync(join(dir, rel)).sort()) {
      const p = rel ? `${rel}/${name}` : name;
      const st = lstatSync(join(dir, p));
      if (st.isSymbolicLink()) out[p] = `link${p.startsWith('pg_tblspc/') ? '' : ` ${readlinkSync(join(dir, p))}`}`;
      else if (st.isDirectory()) {
        out[p] = 'dir';
        walk(p);
      } else if (p === 'postgresql.auto.conf') out[p] = 'file';
      else {
        const digest = createHash('sha256')
          .update(readFileSync(join(dir, p)))
          .digest('hex');
        out[p] = `${(st.mode & 0o777).toString(8)} ${digest}`;
      }
    }
  };
  walk('');
  return out;
}

for (const version of versionsUnderTest()) {
  describe(`RESTORE --delta on PostgreSQL ${version}`, () => {
    let src: RestoreSource;
    let tsOid: number;
    let full: string;
    const cleanup: string[] = [];

    /** A fresh restore target and tablespace location, removed at the end. */
    const places = () => {
      const path = freshPath(src, 'delta');
      const ts = freshPath(src, 'delta-ts');
      cleanup.push(path, ts);
      return { path, ts };
    };
    const restoreArgs = (id: string, at: { path: string; ts: string }, extra: string[] = []) => [
      '-i',
      id,
      '-p',
      at.path,
      '-c',
      '--target-immediate',
      '--target-action',
      'promote',
      '-t',
      'current',
      '--tablespace-map',
      `${tsOid}=${at.ts}`,
      ...extra,
    ];
    const restoreOk = async (id: string, at: { path: string; ts: string }, extra: string[] = []) => {
      const r = await src.restore(restoreArgs(id, at, extra));
      assert.equal(r.code, 0, `RESTORE ${extra.join(' ')} failed\n${r.stdout}\n${r.stderr}`);
      return r;
    };

    /**
     * Starts a restored cluster and changes it the ways a delta restore must undo: rows changed, a
     * table created and one dropped; then, stopped, files changed, added, removed and truncated.
     */
    const modify = async (path: string) => {
      const c = await startRestored(version, path);
      try {
        await waitPromoted(c);
        await c.query("UPDATE upd SET v = v || '-changed' WHERE id % 10 = 0");
        await c.query('DROP TABLE drop_me');
        await c.query('CREATE TABLE created_after AS SELECT g AS id FROM generate_series(1, 5000) g');
        const truncated = await relationPath(c, 'trunc_me');
        const removed = await relationPath(c, 'remove_me');
        await c.query('CHECKPOINT');
        await c.stop();
        truncateSync(join(path, truncated), 8192);
        unlinkSync(join(path, removed));
        writeFileSync(join(path, 'junk_file'), 'not from the backup\n');
        mkdirSync(join(path, 'junk_dir'));
        writeFileSync(join(path, 'junk_dir', 'x'), 'x');
        writeFileSync(join(path, 'pg_wal', '000000090000000000000001'), Buffer.alloc(1024));
        // Made as root here; the cluster owner's, as files a DBA leaves in a data directory are.
        const ids = testUserIds();
        if (ids) {
          for (const p of ['junk_file', 'junk_dir', 'junk_dir/x', 'pg_wal/000000090000000000000001']) {
            chownSync(join(path, p), ids.uid, ids.gid);
          }
        }
      } finally {
        await c.destroy();
      }
    };

    before(async () => {
      src = await createIncrementalSource(version);
      const c = src.cluster;
      const tsDir = freshPath(src, 'ts-orig');
      mkdirSync(tsDir, { mode: 0o700 });
      const ids = testUserIds();
      if (ids) chownSync(tsDir, ids.uid, ids.gid);
      await c.query(`CREATE TABLESPACE ts1 LOCATION '${tsDir}'`);
      tsOid = Number(await c.scalar(`SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'`));
      await c.query(
        'CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 20) AS payload FROM generate_series(1, 30000) g',
      );
      await c.query(
        'CREATE TABLE in_ts TABLESPACE ts1 AS SELECT g AS id, md5(g::text) AS t FROM generate_series(1, 20000) g',
      );
      await c.query(`CREATE TABLE upd AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 2000) g`);
      for (const t of ['drop_me', 'trunc_me', 'remove_me']) {
        await c.query(`CREATE TABLE ${t} AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 3000) g`);
      }
      // Hint bits and visibility set now, so reading the restored tables does not change their pages.
      await c.query('VACUUM FREEZE');
      await c.query('CHECKPOINT');
      full = await takeBackup(src);
      await src.archiveCurrentWal();
    });

    after(async () => {
      for (const p of cleanup) removeTree(p);
      await src?.destroy();
    });

    test('a restored, started, modified data directory becomes the same as a fresh restore, writing less', async () => {
      const fresh = places();
      const r0 = await restoreOk(full, fresh);
      const fullBytes = fullSummary(r0.stdout);
      const target = places();
      await restoreOk(full, target);
      await modify(target.path);

      const r = await restoreOk(full, target, ['--delta']);
      const { wrote, kept } = deltaSummary(r.stdout);
      console.error(`full restore: ${fullBytes} bytes; ${/delta restore: .*/.exec(r.stdout)![0]}`);
      assert.ok(wrote < fullBytes / 2, `delta wrote ${wrote} bytes, a full restore ${fullBytes}:\n${r.stdout}`);
      assert.ok(kept > fullBytes / 2, `delta kept only ${kept} of ${fullBytes} bytes:\n${r.stdout}`);
      assert.deepEqual(treeDigest(target.path), treeDigest(fresh.path), 'data directory differs from a fresh restore');
      assert.deepEqual(treeDigest(target.ts), treeDigest(fresh.ts), 'tablespace differs from a fresh restore');
      assert.ok(!existsSync(join(target.path, 'junk_file')) && !existsSync(join(target.path, 'junk_dir')));

      const a = await startRestored(version, target.path);
      const b = await startRestored(version, fresh.path);
      try {
        await Promise.all([waitPromoted(a), waitPromoted(b)]);
        const want = await contentSnapshot(b);
        assert.ok(
          Object.keys(want).some((k) => k.includes('drop_me')),
          'the fresh restore has the dropped table',
        );
        assert.deepEqual(await contentSnapshot(a), want, 'delta-restored data differs from a fresh restore');
      } finally {
        await a.destroy();
        await b.destroy();
      }
    });

    test('refused: another cluster, a running server, not a data directory; nothing is changed', async () => {
      // Another cluster: its own initdb, so its own system identifier.
      const other = await TestCluster.create({ version });
      try {
        await other.stop();
        const before = snapshot(other.dataDir);
        const elsewhere = { path: other.dataDir, ts: freshPath(src, 'ts-x') };
        const r = await src.restore(restoreArgs(full, elsewhere, ['--delta']));
        assert.notEqual(r.code, 0);
        assert.match(r.stderr, /ERROR: .*belongs to another cluster \(system identifier \d+; backup \d+ has \d+\)/);
        assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
        assert.deepEqual(snapshot(other.dataDir), before);
      } finally {
        await other.destroy();
      }

      const at = places();
      await restoreOk(full, at);
      const running = await startRestored(version, at.path);
      try {
        await waitPromoted(running);
        const before = snapshot(at.path);
        const r = await src.restore(restoreArgs(full, at, ['--delta']));
        assert.notEqual(r.code, 0);
        assert.match(r.stderr, /ERROR: .*a server is running on .*postmaster\.pid names process \d+/);
        assert.deepEqual(snapshot(at.path), before);
      } finally {
        await running.destroy();
      }

      const notData = places();
      mkdirSync(notData.path);
      writeFileSync(join(notData.path, 'precious.txt'), 'keep me\n');
      const r = await src.restore(restoreArgs(full, notData, ['--delta']));
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /ERROR: .*is not a PostgreSQL data directory \(no readable global\/pg_control\)/);
      assert.deepEqual(readdirSync(notData.path), ['precious.txt']);

      // Without --delta, a data directory is refused as before.
      const plain = await src.restore(restoreArgs(full, at));
      assert.notEqual(plain.code, 0);
      assert.match(plain.stderr, /is not empty/);
    });

    test('an incremental chain: a directory restored from the full backup is brought to the chain end', async () => {
      const c = src.cluster;
      await c.query("UPDATE big SET payload = payload || 'x' WHERE id % 500 = 0");
      await c.query('CREATE TABLE chain_new AS SELECT g AS id FROM generate_series(1, 1000) g');
      await c.query('CHECKPOINT');
      const incr1 = await takeBackup(src, full);
      await c.query('DELETE FROM upd WHERE id > 1500');
      await c.query('VACUUM upd');
      await c.query('CHECKPOINT');
      const incr2 = await takeBackup(src, incr1);
      await src.archiveCurrentWal();

      const fresh = places();
      await restoreOk(incr2, fresh);
      const target = places();
      await restoreOk(full, target);
      await modify(target.path);
      const r = await restoreOk(incr2, target, ['--delta']);
      const { kept } = deltaSummary(r.stdout);
      console.error(`chain: ${/delta restore: .*/.exec(r.stdout)![0]}\n${/--delta: .*/.exec(r.stdout)?.[0] ?? ''}`);
      assert.ok(kept > 0, r.stdout);
      assert.deepEqual(treeDigest(target.path), treeDigest(fresh.path), 'data directory differs from a fresh restore');
      assert.deepEqual(treeDigest(target.ts), treeDigest(fresh.ts), 'tablespace differs from a fresh restore');
      // Restored from the chain end itself: files the full backup does not have (chain_new) are kept,
      // and must survive the chain's clean-up between links.
      const again = places();
      await restoreOk(incr2, again);
      await modify(again.path);
      const r2 = await restoreOk(incr2, again, ['--delta']);
      assert.ok(deltaSummary(r2.stdout).kept > 0, r2.stdout);
      assert.deepEqual(treeDigest(again.path), treeDigest(fresh.path), 'chain end over itself differs');
      assert.deepEqual(treeDigest(again.ts), treeDigest(fresh.ts), 'tablespace differs from a fresh restore');
      const a = await startRestored(version, target.path);
      const b = await startRestored(version, fresh.path);
      try {
        await Promise.all([waitPromoted(a), waitPromoted(b)]);
        assert.deepEqual(await contentSnapshot(a), await contentSnapshot(b), 'delta-restored chain differs');
      } finally {
        await a.destroy();
        await b.destroy();
      }
    });

    test('-r: over ssh, checksums computed on the other host, the same result as a fresh restore', async () => {
      const sshd = await TestSshd.start(['postgres']);
      try {
        sshd.authorize('postgres', 'postgres');
        const fresh = places();
        await restoreOk(full, fresh);
        const target = places();
        const remote = ['-r', `postgres@${sshd.alias}`];
        await restoreOk(full, target, remote);
        // Drift without starting it (kept small: over ssh every step is slower): a changed block, a
        // truncated and a removed relation, a stray file and a stale postmaster.pid naming a dead process.
        const files = (
          await src.cluster.query<{ p: string }>(
            "SELECT pg_relation_filepath(c) AS p FROM unnest(ARRAY['upd', 'trunc_me', 'remove_me']::regclass[]) c",
          )
        ).map((r) => r.p);
        const upd = readFileSync(join(target.path, files[0]!));
        upd.fill(7, 100, 200);
        writeFileSync(join(target.path, files[0]!), upd);
        truncateSync(join(target.path, files[1]!), 8192);
        unlinkSync(join(target.path, files[2]!));
        writeFileSync(join(target.path, 'junk_file'), 'x');
        writeFileSync(join(target.path, 'postmaster.pid'), '999999\n');
        const ids = testUserIds();
        if (ids) for (const p of ['junk_file', 'postmaster.pid']) chownSync(join(target.path, p), ids.uid, ids.gid);

        const r = await restoreOk(full, target, [...remote, '--delta']);
        const { wrote, kept } = deltaSummary(r.stdout);
        console.error(`-r: ${/delta restore: .*/.exec(r.stdout)![0]}`);
        assert.ok(kept > wrote, r.stdout);
        assert.deepEqual(treeDigest(target.path), treeDigest(fresh.path), 'data directory differs from a fresh one');
        assert.deepEqual(treeDigest(target.ts), treeDigest(fresh.ts), 'tablespace differs from a fresh restore');
      } finally {
        await sshd.stop();
      }
    });

    test('killed in the middle of its writes, the next RESTORE --delta completes the job', async () => {
      const fresh = places();
      await restoreOk(full, fresh);
      const target = places();
      await restoreOk(full, target);
      await modify(target.path);
      const args = ['RESTORE', '-s', src.server, ...restoreArgs(full, target, ['--delta', '-w', '1'])];
      const killed = await src.setup.bart(args, { PGBART_CRASH_AT: 'restore:delta-task' });
      assert.equal(killed.code, null, `RESTORE was not killed:\n${killed.stdout}\n${killed.stderr}`);
      // Half done: it cannot be started by mistake.
      assert.ok(existsSync(join(target.path, '.pgbart-restore-incomplete')));
      assert.ok(!existsSync(join(target.path, 'PG_VERSION')));
      assert.notDeepEqual(treeDigest(target.path), treeDigest(fresh.path));

      await restoreOk(full, target, ['--delta']);
      assert.deepEqual(treeDigest(target.path), treeDigest(fresh.path), 'data directory differs after the rerun');
      const a = await startRestored(version, target.path);
      const b = await startRestored(version, fresh.path);
      try {
        await Promise.all([waitPromoted(a), waitPromoted(b)]);
        assert.deepEqual(await contentSnapshot(a), await contentSnapshot(b));
      } finally {
        await a.destroy();
        await b.destroy();
      }
    });
  });
}
