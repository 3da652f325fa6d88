import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  closeSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { PageChecker } from '../src/backup/page-check.js';
import { LocalHost } from '../src/hosts/local/data-host.js';
import { checksumPage, PAGE_SIZE, PageVerifier, pageChecksum } from '../src/postgres/page-checksum.js';
import { checkPageChecksums } from '../src/postgres/scratch-cluster.js';
import { pgbenchInit, pgbenchRun } from './harness/load.js';
import { clientTool, versionsUnderTest } from './harness/pg-binaries.js';
import { makeTempDir, removeTree, runOk } from './harness/os.js';
import { createIncrementalSource, relationPath, takeBackup, tryBackup } from './harness/incremental.js';
import { createRestoreSource, type RestoreSource } from './harness/restore.js';
import { createBartSetup, serverSection } from './harness/bart.js';
import { TestCluster } from './harness/cluster.js';
import { BART_TEST_USER, TestSshd } from './harness/sshd.js';

/** A table of ~70 pages. */
const TABLE_T = 'CREATE TABLE t AS SELECT g AS id, repeat(md5(g::text), 3) AS payload FROM generate_series(1, 4000) g';

/** The WARNING BACKUP prints for a file with failing blocks. */
function warning(file: string, blocks: number[]): string {
  const noun = blocks.length > 1 ? 'blocks' : 'block';
  return `WARNING: page verification failed in ${file}: ${noun} ${blocks.join(', ')} (checksum mismatch)`;
}

/** SHOW-BACKUPS --output json of one backup. */
async function shown(src: RestoreSource, id: string): Promise<Record<string, unknown>> {
  const r = await src.setup.bart(['SHOW-BACKUPS', '-s', src.server, '-i', id, '--output', 'json']);
  assert.equal(r.code, 0, r.stderr);
  const rows = JSON.parse(r.stdout) as Record<string, unknown>[];
  assert.equal(rows.length, 1);
  return rows[0]!;
}

/** The WARNING lines about pages a BACKUP printed, from `WARNING:` on, single-spaced. */
function pageWarnings(out: { stdout: string; stderr: string }): string[] {
  return (out.stdout + out.stderr)
    .split('\n')
    .filter((l) => l.includes('page verification failed'))
    .map((l) => l.replace(/^.*?WARNING:\s+/, 'WARNING: '));
}

/** Overwrites 16 bytes in the middle of each block (header, and so pd_lsn, left intact). */
function corrupt(file: string, blocks: number[]): void {
  const fd = openSync(file, 'r+');
  try {
    for (const b of blocks) writeSync(fd, Buffer.alloc(16, 0xab), 0, 16, b * PAGE_SIZE + 4000);
  } finally {
    closeSync(fd);
  }
}

/** Every non-new page of every relation file of a data directory, with its block number. */
function* relationPages(dataDir: string): Generator<{ file: string; block: number; page: Buffer }> {
  const dirs = ['global', ...readdirSync(join(dataDir, 'base')).map((d) => join('base', d))];
  for (const dir of dirs) {
    for (const name of readdirSync(join(dataDir, dir))) {
      const m = /^\d+(?:_(?:fsm|vm|init))?(?:\.(\d+))?$/.exec(name);
      if (!m) continue;
      const data = readFileSync(join(dataDir, dir, name));
      const segment = Number(m[1] ?? 0);
      for (let b = 0; (b + 1) * PAGE_SIZE <= data.length; b++) {
        const page = data.subarray(b * PAGE_SIZE, (b + 1) * PAGE_SIZE);
        if (page.readUInt16LE(14) === 0) continue; // new page: no checksum
        yield { file: join(dir, name), block: segment * 131072 + b, page };
      }
    }
  }
}

for (const version of versionsUnderTest()) {
  describe(`page checksums verified by BACKUP, PostgreSQL ${version}`, { concurrency: false }, () => {
    let src: RestoreSource;
    let table: string;
    let index: string;
    let parent: string;

    before(async () => {
      src = await createIncrementalSource(version);
      // Nothing but the test may read the corrupted pages (a read would only fail, but say so in the log).
      src.cluster.writeConf({ autovacuum: 'off' });
      await src.cluster.restart();
      await pgbenchInit(src.cluster, 2);
      await src.cluster.query(TABLE_T);
      await src.cluster.query('CREATE INDEX t_id ON t (id)');
      await src.cluster.query('CHECKPOINT');
      table = join(src.cluster.dataDir, await relationPath(src.cluster, 't'));
      index = join(src.cluster.dataDir, await relationPath(src.cluster, 't_id'));
    });
    after(async () => {
      await src?.destroy();
    });

    test('the checksum of every page of a real cluster with data checksums is pd_checksum', () => {
      let pages = 0;
      for (const { file, block, page } of relationPages(src.cluster.dataDir)) {
        const copy = Buffer.from(page); // 4-byte aligned, on its own
        const words = new Int32Array(copy.buffer, copy.byteOffset, PAGE_SIZE / 4);
        assert.equal(pageChecksum(words, 0, block), page.readUInt16LE(8), `${file} block ${block}`);
        // The WebAssembly kernel the verifier uses, on the page where it lies (any alignment).
        assert.equal(checksumPage(page, 0, block), page.readUInt16LE(8), `${file} block ${block} (WebAssembly)`);
        pages++;
      }
      assert.ok(pages > 1000, `${pages} pages checked`);
      // The block number is part of it: the same page elsewhere in the relation does not pass.
      const page = readFileSync(table).subarray(PAGE_SIZE, 2 * PAGE_SIZE);
      const words = new Int32Array(Buffer.from(page).buffer, 0, PAGE_SIZE / 4);
      assert.notEqual(pageChecksum(words, 0, 2), page.readUInt16LE(8));
    });

    test('the streaming verifier finds the same pages whatever the pieces and their alignment', () => {
      const data = Buffer.from(readFileSync(table));
      corruptBuffer(data, [1, 4]);
      const run = (pieceSize: number, misalign: number) => {
        const v = new PageVerifier(0, 1n << 60n);
        for (let at = 0; at < data.length; at += pieceSize) {
          const piece = data.subarray(at, Math.min(data.length, at + pieceSize));
          // A copy that starts 1-3 bytes into its ArrayBuffer, as a Buffer from Node's pool may.
          const odd = Buffer.alloc(piece.length + misalign).subarray(misalign);
          piece.copy(odd);
          v.update(odd);
        }
        return { suspects: v.suspects, checked: v.checked };
      };
      const expected = run(1 << 20, 0);
      assert.deepEqual(expected.suspects, [1, 4]);
      assert.ok(expected.checked > 10);
      for (const [size, mis] of [
        [512, 0],
        [8192 + 512, 1],
        [3000, 2],
        [100_000, 3],
        [8192, 0],
      ] as const) {
        assert.deepEqual(run(size, mis), expected, `pieces of ${size} bytes at offset ${mis}`);
      }
      // Pages changed since the backup started are not checked (WAL replay rewrites them).
      const v = new PageVerifier(0, 1n);
      v.update(data);
      assert.deepEqual(v.suspects, []);
    });

    test('a failing page is read again before it is reported: only a page still bad on disk is', async () => {
      const dir = makeTempDir('pagecheck');
      try {
        const onDisk = Buffer.from(readFileSync(table));
        corruptBuffer(onDisk, [5]);
        writeFileSync(join(dir, '16384'), onDisk);
        // What the first read saw: block 2 torn (mid-write), block 5 as corrupt as it is on disk.
        const firstRead = Buffer.from(onDisk);
        corruptBuffer(firstRead, [2]);
        const checker = new PageChecker();
        checker.begin(1n << 60n);
        const target = checker.target('base', 'base/5/16384')!;
        assert.deepEqual(target, { name: 'base/5/16384', firstBlock: 0 });
        assert.equal(checker.target('base', 'base/5/pg_filenode.map'), undefined);
        assert.equal(checker.target('base', 'global/pg_control'), undefined);
        assert.deepEqual(checker.target('16385', 'PG_15_202209061/5/16390.2'), {
          name: 'pg_tblspc/16385/PG_15_202209061/5/16390.2',
          firstBlock: 2 * 131072,
        });
        const v = checker.verifier(target);
        v.update(firstRead);
        assert.deepEqual(v.suspects, [2, 5]);
        await checker.settle(target, v, new LocalHost(), join(dir, '16384'));
        assert.deepEqual(checker.corruptFiles, [{ file: 'base/5/16384', blocks: [5], count: 1 }]);
        assert.equal(checker.corruptPages, 1);
      } finally {
        removeTree(dir);
      }
    });

    test('VERIFY-RESTORE check of a stopped cluster: every page, tablespaces too, failures by file', async () => {
      const dir = makeTempDir('stopped-check');
      try {
        const data = join(dir, 'data');
        const put = (path: string, content: Buffer, bad: number[] = []) => {
          const copy = Buffer.from(content);
          corruptBuffer(copy, bad);
          mkdirSync(dirname(path), { recursive: true });
          writeFileSync(path, copy);
        };
        const t = readFileSync(table);
        const i = readFileSync(index);
        put(join(data, 'base/5/16384'), t, [1, 4]);
        put(join(data, 'base/5/16400'), t, [...Array(25).keys()]);
        // Not relation files: no checksums to check (garbage would fail if they were).
        put(join(data, 'base/5/pg_filenode.map'), Buffer.alloc(PAGE_SIZE, 0x5a));
        put(join(data, 'global/pg_control'), Buffer.alloc(PAGE_SIZE, 0x5a));
        // A tablespace linked from pg_tblspc, and an in-place one (a directory in pg_tblspc).
        put(join(dir, 'spc/PG_15_202209061/5/16390'), i);
        mkdirSync(join(data, 'pg_tblspc'));
        symlinkSync(join(dir, 'spc'), join(data, 'pg_tblspc/16385'));
        put(join(data, 'pg_tblspc/16386/PG_15_202209061/5/16391'), i, [2]);

        const pagesOf = (b: Buffer) => {
          let n = 0;
          for (let at = 0; at + PAGE_SIZE <= b.length; at += PAGE_SIZE) if (b.readUInt16LE(at + 14) !== 0) n++;
          return n;
        };
        const r = await checkPageChecksums(data, new AbortController().signal);
        assert.deepEqual(r, {
          checked: true,
          ok: false,
          files: 4,
          pages: 2 * pagesOf(t) + 2 * pagesOf(i),
          failedPages: 2 + 25 + 1,
          problems: [
            'base/5/16384: blocks 1, 4 (checksum mismatch)',
            `base/5/16400: blocks ${[...Array(20).keys()].join(', ')} and 5 more (checksum mismatch)`,
            'pg_tblspc/16386/PG_15_202209061/5/16391: block 2 (checksum mismatch)',
          ],
        });
      } finally {
        removeTree(dir);
      }
    });

    test('a clean cluster under heavy writes during the backup: no page is reported', async () => {
      const load = pgbenchRun(src.cluster, 12, 4);
      // Checkpoints during the backup write pages the backup may be reading.
      let loading = true;
      const checkpoints = (async () => {
        while (loading) {
          await src.cluster.query('CHECKPOINT').catch(() => undefined);
          await new Promise((r) => setTimeout(r, 300));
        }
      })();
      await new Promise((r) => setTimeout(r, 1000));
      try {
        for (const format of ['t', 'p']) {
          const r = await tryBackup(src, ['-F', format, '--thread-count', '2']);
          assert.equal(r.code, 0, r.stderr);
          assert.deepEqual(pageWarnings(r), [], `-F ${format}`);
          assert.match(r.stdout, /page checksums verified: \d+ pages, no errors/);
          const id = /backup identifier: '(\d+)'/.exec(r.stdout)![1]!;
          const row = await shown(src, id);
          assert.equal(row.pageVerification, 'verified');
          assert.equal(row.checksumErrors, 0);
          parent = id;
        }
      } finally {
        loading = false;
        await checkpoints;
        await load;
      }
    });

    test('corrupt table and index pages: BACKUP completes, names file and blocks (full, incremental)', async () => {
      // Change blocks 3 and 7 of the table after the parent backup, so the incremental reads them.
      await src.cluster.query('UPDATE t SET payload = upper(payload) WHERE (ctid::text::point)[0] IN (3, 7)');
      await src.cluster.query('CHECKPOINT');
      await src.archiveCurrentWal();
      await src.cluster.stop();
      corrupt(table, [3, 7]);
      corrupt(index, [1]);
      await src.cluster.start();
      const tableName = table.slice(src.cluster.dataDir.length + 1);
      const indexName = index.slice(src.cluster.dataDir.length + 1);

      for (const args of [
        ['-F', 't'],
        ['-F', 'p', '--thread-count', '2'],
        ['-F', 't', '-z'],
      ]) {
        const r = await tryBackup(src, args);
        assert.equal(r.code, 0, `BACKUP ${args.join(' ')} completes:\n${r.stderr}`);
        const warnings = pageWarnings(r);
        assert.ok(warnings.includes(warning(tableName, [3, 7])), warnings.join('\n'));
        assert.ok(warnings.includes(warning(indexName, [1])), warnings.join('\n'));
        assert.equal(warnings.length, 2, warnings.join('\n'));
        const id = /backup identifier: '(\d+)'/.exec(r.stdout)![1]!;
        const row = await shown(src, id);
        assert.equal(row.checksumErrors, 3);
        assert.deepEqual(
          row.checksumErrorFiles,
          [
            { file: tableName, blocks: [3, 7], count: 2 },
            { file: indexName, blocks: [1], count: 1 },
          ].sort((a, b) => (a.file < b.file ? -1 : 1)),
        );
        const detail = await src.setup.bart(['SHOW-BACKUPS', '-s', src.server, '-i', id, '-t']);
        assert.match(detail.stdout, new RegExp(`CHECKSUM ERRORS\\s+: 3 \\(.*${tableName}: blocks 3, 7`));
        const backupinfo = readFileSync(join(src.setup.backupPath, src.server, id, 'backupinfo'), 'utf8');
        assert.match(backupinfo, /^CHECKSUM ERRORS: 3$/m);
        assert.match(readFileSync(src.setup.logfile, 'utf8'), new RegExp(`page verification failed in ${tableName}`));
      }

      // The incremental reads the blocks changed since the parent: the table's 3 and 7 (and the
      // index's block 1 only if the UPDATE put new entries there).
      const incr = await tryBackup(src, ['--parent', parent]);
      assert.equal(incr.code, 0, incr.stderr);
      const warnings = pageWarnings(incr);
      assert.ok(warnings.includes(warning(tableName, [3, 7])), warnings.join('\n'));
      const expected = [warning(tableName, [3, 7]), warning(indexName, [1])];
      assert.ok(
        warnings.every((w) => expected.includes(w)),
        warnings.join('\n'),
      );
      const incrId = /backup identifier: '(\d+)'/.exec(incr.stdout)![1]!;
      assert.equal((await shown(src, incrId)).checksumErrors, warnings.length === 1 ? 2 : 3);
    });

    test('--no-verify-checksums: no page is checked', async () => {
      const r = await tryBackup(src, ['--no-verify-checksums']);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(pageWarnings(r), []);
      const row = await shown(src, /backup identifier: '(\d+)'/.exec(r.stdout)![1]!);
      assert.equal(row.pageVerification, 'not verified');
      assert.equal(row.checksumErrors, null);
    });
  });
}

/** {@link corrupt} on bytes in memory. */
function corruptBuffer(data: Buffer, blocks: number[]): void {
  for (const b of blocks) data.fill(0xab, b * PAGE_SIZE + 4000, b * PAGE_SIZE + 4016);
}

describe('a cluster without data checksums', () => {
  let src: RestoreSource;
  before(async () => {
    // pg_checksums exists only as Debian's PostgreSQL 15 client tool (the other versions' packages ship initdb,
    // pg_ctl and postgres), and what is checked here does not depend on the version: a 15 cluster in every run.
    src = await createRestoreSource(15);
    await src.cluster.stop();
    await runOk(clientTool('pg_checksums'), ['--disable', '-D', src.cluster.dataDir]);
    await src.cluster.start();
  });
  after(async () => {
    await src?.destroy();
  });

  test('is not checked, and BACKUP says so once', async () => {
    const id = await takeBackup(src);
    const r = await tryBackup(src, ['-F', 'p']);
    assert.equal(r.code, 0, r.stderr);
    const said = r.stdout.split('\n').filter((l) => /has no data checksums.*pages are not verified/.test(l));
    assert.equal(said.length, 1, r.stdout);
    assert.deepEqual(pageWarnings(r), []);
    assert.doesNotMatch(r.stdout, /page checksums verified/);
    const row = await shown(src, id);
    assert.equal(row.pageVerification, 'no data checksums');
    assert.equal(row.checksumErrors, null);
  });
});

test('a remote server (ssh): BACKUP verifies the pages it reads over ssh, tar and plain', async () => {
  const version = versionsUnderTest()[0]!;
  const cleanups: (() => Promise<void> | void)[] = [];
  try {
    const sshd = await TestSshd.start(['postgres', BART_TEST_USER]);
    cleanups.push(() => sshd.stop());
    sshd.authorize(BART_TEST_USER, 'postgres'); // bart reads the data directory as cluster_owner
    sshd.authorize('postgres', BART_TEST_USER); // archive_command scp's to the BART host
    const cluster = await TestCluster.create({ version, conf: { archive_mode: 'on', autovacuum: 'off' } });
    cleanups.push(() => cluster.destroy());
    const setup = createBartSetup({ bart_host: `${BART_TEST_USER}@${sshd.alias}` });
    cleanups.push(() => setup.cleanup());
    const section = serverSection(cluster, 'rem', { remote_host: `postgres@${sshd.alias}` });
    setup.writeConfig(`${readFileSync(setup.configPath, 'utf8')}\n${section}`);
    execFileSync('chown', ['-R', `${BART_TEST_USER}:`, setup.dir]);
    const init = await setup.bart(['INIT', '-s', 'rem']);
    assert.equal(init.code, 0, init.stderr);

    await cluster.query(TABLE_T);
    await cluster.query('CHECKPOINT');
    const tableName = String(await cluster.scalar("SELECT pg_relation_filepath('t')"));
    await cluster.stop();
    corrupt(join(cluster.dataDir, tableName), [2, 9]);
    await cluster.start();
    for (const format of ['t', 'p']) {
      const r = await setup.bart(['BACKUP', '-s', 'rem', '-F', format, '--thread-count', '2']);
      assert.equal(r.code, 0, `-F ${format}: ${r.stderr}`);
      assert.deepEqual(pageWarnings(r), [warning(tableName, [2, 9])], `-F ${format}`);
    }
  } finally {
    for (const c of cleanups.reverse()) await c();
  }
});
