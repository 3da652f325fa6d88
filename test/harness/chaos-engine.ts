// Test harness: one randomized chaos run, seeded workload, full and incremental backups, every restore checked.

import { chownSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { TestCluster } from './cluster.js';
import { prng } from './prng.js';
import { removeTree, run, testUserIds } from './os.js';
import { clientTool } from './pg-binaries.js';
import { contentSnapshot, createIncrementalSource } from './incremental.js';
import { freshPath, startRestored, waitPromoted } from './restore.js';

/** Settings of one randomized run. */
export interface ChaosOptions {
  seed: number;
  /** Wall-clock budget for the workload and backups (restores come after, not counted). */
  seconds: number;
  version: number;
  /** Also create a table larger than 1 GB (several relation segment files) and update it. */
  bigTables?: boolean;
  /** Run pg_amcheck on every restored cluster (default: only on the last restore of each kind). */
  amcheckAll?: boolean;
  log?: (line: string) => void;
}

/** What a run did. */
export interface ChaosResult {
  seed: number;
  version: number;
  operations: number;
  backups: number;
  incrementals: number;
  maxDepth: number;
  restorePoints: number;
  restores: number;
}

interface Table {
  name: string;
  db: string;
  unlogged: boolean;
}

interface Backup {
  id: string;
  parent?: string;
  depth: number;
  snap: Record<string, string>;
}

interface RestorePoint {
  name: string;
  lsn: string;
  snap: Record<string, string>;
}

/** Values a sequence may be ahead by after recovery: nextval WAL-logs 32 values in advance (SEQ_LOG_VALS). */
const SEQ_LOG_VALS = 32;

/**
 * Whether a restored object equals the source's. A sequence replayed from WAL (a restore point past
 * the backup) comes back at the value its last WAL record logged, up to 32 past what the source had
 * handed out: PostgreSQL's documented behaviour after any recovery, not a backup fault.
 */
function sameContent(key: string, expected: string | undefined, got: string | undefined): boolean {
  if (expected === got) return true;
  if (
    !key.includes(':seq:') ||
    expected === undefined ||
    got === undefined ||
    !/^\d+$/.test(expected) ||
    !/^\d+$/.test(got)
  )
    return false;
  const ahead = Number(got) - Number(expected);
  return ahead > 0 && ahead <= SEQ_LOG_VALS;
}

/** Thrown when a restored cluster differs from what the source held; names the seed to replay. */
export class ChaosMismatch extends Error {}

/**
 * One randomized correctness run: a seeded workload (DML, TRUNCATE, DROP/CREATE TABLE, VACUUM
 * [FULL], CLUSTER, REINDEX, CREATE/DROP DATABASE with both strategies, SET TABLESPACE, unlogged
 * tables, sequences, large objects, TOAST-sized values) interleaved with full and incremental
 * backups (deep chains and branches) and named restore points; then every backup and every restore
 * point is restored, started, checked with pg_amcheck and compared with the content recorded on the
 * source at that moment. Any difference throws {@link ChaosMismatch} naming seed and step.
 */
export async function runChaos(opts: ChaosOptions): Promise<ChaosResult> {
  const say = opts.log ?? (() => undefined);
  const rnd = prng(opts.seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const int = (lo: number, hi: number) => lo + Math.floor(rnd() * (hi - lo + 1));
  const src = await createIncrementalSource(opts.version);
  const c = src.cluster;
  const result: ChaosResult = {
    seed: opts.seed,
    version: opts.version,
    operations: 0,
    backups: 0,
    incrementals: 0,
    maxDepth: 0,
    restorePoints: 0,
    restores: 0,
  };
  const tag = `seed ${opts.seed}, PostgreSQL ${opts.version}`;
  try {
    await c.query('ALTER SYSTEM SET autovacuum = off');
    await c.query('SELECT pg_reload_conf()');
    const tsDir = join(src.scratch, 'ts1');
    mkdirSync(tsDir);
    const ids = testUserIds();
    if (ids) chownSync(tsDir, ids.uid, ids.gid);
    await c.query(`CREATE TABLESPACE ts1 LOCATION '${tsDir}'`);
    const tsOid = Number(await c.scalar("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'"));
    const tables: Table[] = [];
    const dbs = ['postgres'];
    let counter = 0;
    const q = (sql: string, db = 'postgres') => c.query(sql, [], db);

    const createTable = async (db: string) => {
      const name = `t${++counter}`;
      const unlogged = rnd() < 0.1;
      const ts = rnd() < 0.25 ? ' TABLESPACE ts1' : '';
      // Unlogged tables get no serial: an unlogged sequence created after a backup comes back zeroed
      // ("bad magic number in sequence") from archive recovery to a later target, with a plain full
      // backup just as well (PostgreSQL 15 and 18 tried): PostgreSQL's, not the backup's, behaviour.
      // Their ids come from a logged sequence instead (a random/clock default collided: birthday odds).
      const id = unlogged ? "id bigint PRIMARY KEY DEFAULT nextval('chaos_ids')" : 'id bigserial PRIMARY KEY';
      if (unlogged) await q('CREATE SEQUENCE IF NOT EXISTS chaos_ids', db);
      await q(`CREATE ${unlogged ? 'UNLOGGED ' : ''}TABLE ${name} (${id}, k int, v text)${ts}`, db);
      await q(`CREATE INDEX ${name}_k ON ${name} (k)`, db);
      await q(
        `INSERT INTO ${name} (k, v) SELECT g % 97, md5(g::text) FROM generate_series(1, ${int(100, 3000)}) g`,
        db,
      );
      tables.push({ name, db, unlogged });
    };
    for (let i = 0; i < 4; i++) await createTable('postgres');
    await q('CREATE SEQUENCE chaos_seq');
    if (opts.bigTables) {
      say('creating a table larger than 1 GB');
      await q('CREATE TABLE big (id int, pad text) WITH (fillfactor = 100)');
      await q("INSERT INTO big SELECT g, repeat('b', 1800) FROM generate_series(1, 600000) g");
    }

    const backups: Backup[] = [];
    const points: RestorePoint[] = [];
    const takeBackup = async () => {
      // Mostly extend the newest chain (depth), sometimes branch from an older backup, sometimes a new full.
      const incrementalOk = backups.length > 0 && rnd() < 0.85;
      const parent = incrementalOk ? (rnd() < 0.7 ? backups[backups.length - 1]! : pick(backups)) : undefined;
      const args = [
        ...(parent ? ['--parent', parent.id] : []),
        ...(rnd() < 0.3 ? ['-F', 'p'] : []),
        ...(rnd() < 0.3 ? ['--compress', pick(['gzip', 'lz4', 'zstd'])] : []),
      ];
      const id = await src.backup(args);
      const b: Backup = {
        id,
        depth: parent ? parent.depth + 1 : 0,
        snap: await contentSnapshot(c),
        ...(parent ? { parent: parent.id } : {}),
      };
      backups.push(b);
      result.backups++;
      if (parent) result.incrementals++;
      result.maxDepth = Math.max(result.maxDepth, b.depth);
      say(
        `backup ${id}${parent ? ` (incremental, parent ${parent.id}, depth ${b.depth})` : ' (full)'} ${args.join(' ')}`,
      );
    };

    const ops: Array<[number, string, () => Promise<void>]> = [
      [
        20,
        'insert',
        async () => {
          const t = pick(tables);
          const toast = rnd() < 0.3;
          await q(
            `INSERT INTO ${t.name} (k, v) SELECT g % 97, ${toast ? 'repeat(md5(g::text), 400)' : 'md5(random()::text)'} FROM generate_series(1, ${int(1, toast ? 50 : 2000)}) g`,
            t.db,
          );
        },
      ],
      [
        15,
        'update',
        async () => {
          const t = pick(tables);
          await q(`UPDATE ${t.name} SET v = v || 'u', k = k + 1 WHERE k = ${int(0, 96)}`, t.db);
        },
      ],
      [
        10,
        'delete',
        async () => {
          const t = pick(tables);
          await q(
            `DELETE FROM ${t.name} WHERE k % ${int(2, 9)} = 0 OR id > (SELECT max(id) - ${int(10, 500)} FROM ${t.name})`,
            t.db,
          );
        },
      ],
      [
        4,
        'truncate',
        async () => {
          const t = pick(tables);
          await q(`TRUNCATE ${t.name}`, t.db);
          await q(
            `INSERT INTO ${t.name} (k, v) SELECT g % 97, 'after truncate' FROM generate_series(1, ${int(0, 300)}) g`,
            t.db,
          );
        },
      ],
      [
        4,
        'drop table',
        async () => {
          if (tables.length < 3) return;
          const t = tables.splice(Math.floor(rnd() * tables.length), 1)[0]!;
          await q(`DROP TABLE ${t.name}`, t.db);
        },
      ],
      [5, 'create table', async () => createTable(pick(dbs))],
      [
        6,
        'vacuum',
        async () => {
          const t = pick(tables);
          await q(`VACUUM ${t.name}`, t.db);
        },
      ],
      [
        3,
        'vacuum full',
        async () => {
          const t = pick(tables);
          await q(`VACUUM FULL ${t.name}`, t.db);
        },
      ],
      [
        2,
        'cluster',
        async () => {
          const t = pick(tables);
          await q(`CLUSTER ${t.name} USING ${t.name}_k`, t.db);
        },
      ],
      [
        2,
        'reindex',
        async () => {
          const t = pick(tables);
          await q(`REINDEX TABLE ${t.name}`, t.db);
        },
      ],
      [
        3,
        'set tablespace',
        async () => {
          const t = pick(tables);
          await q(`ALTER TABLE ${t.name} SET TABLESPACE ${rnd() < 0.5 ? 'ts1' : 'pg_default'}`, t.db);
        },
      ],
      [
        2,
        'create database',
        async () => {
          const name = `db${++counter}`;
          const strategy = opts.version >= 15 ? ` STRATEGY ${pick(['FILE_COPY', 'WAL_LOG'])}` : '';
          const template = dbs.length > 1 && rnd() < 0.5 ? pick(dbs.filter((d) => d !== 'postgres')) : 'template1';
          // A template must have no other session: ours are one per query, so it is idle here.
          await q(`CREATE DATABASE ${name} TEMPLATE ${template}${strategy}`);
          if (template !== 'template1')
            for (const t of tables.filter((x) => x.db === template)) tables.push({ ...t, db: name });
          dbs.push(name);
          await createTable(name);
        },
      ],
      [
        1,
        'drop database',
        async () => {
          const victims = dbs.filter((d) => d !== 'postgres');
          if (victims.length === 0) return;
          const name = pick(victims);
          await q(`DROP DATABASE ${name}`);
          dbs.splice(dbs.indexOf(name), 1);
          for (let i = tables.length - 1; i >= 0; i--) if (tables[i]!.db === name) tables.splice(i, 1);
        },
      ],
      [
        1,
        'database set tablespace',
        async () => {
          const victims = dbs.filter((d) => d !== 'postgres');
          if (victims.length === 0) return;
          await q(`ALTER DATABASE ${pick(victims)} SET TABLESPACE ${rnd() < 0.5 ? 'ts1' : 'pg_default'}`);
        },
      ],
      [
        3,
        'sequence',
        async () => {
          await q(`SELECT nextval('chaos_seq') FROM generate_series(1, ${int(1, 40)})`);
        },
      ],
      [
        3,
        'large object',
        async () => {
          if (rnd() < 0.7)
            await q(`SELECT lo_from_bytea(0, convert_to(repeat(md5(random()::text), ${int(1, 4000)}), 'UTF8'))`);
          else await q('SELECT lo_unlink(oid) FROM pg_largeobject_metadata ORDER BY oid LIMIT 1');
        },
      ],
      [
        3,
        'checkpoint',
        async () => {
          await q('CHECKPOINT');
        },
      ],
      ...(opts.bigTables
        ? [
            [
              3,
              'update big',
              async () => {
                await q(
                  `UPDATE big SET pad = repeat('u', 1800) WHERE id IN (SELECT (random() * 600000)::int FROM generate_series(1, 200))`,
                );
              },
            ] as [number, string, () => Promise<void>],
          ]
        : []),
      [
        4,
        'restore point',
        async () => {
          const name = `rp${++counter}`;
          const lsn = String(await c.scalar(`SELECT pg_create_restore_point('${name}')::text`));
          points.push({ name, lsn, snap: await contentSnapshot(c) });
          result.restorePoints++;
        },
      ],
      [7, 'backup', takeBackup],
    ];
    const totalWeight = ops.reduce((n, [w]) => n + w, 0);
    await takeBackup();
    const deadline = Date.now() + opts.seconds * 1000;
    while (Date.now() < deadline) {
      let r = rnd() * totalWeight;
      let op = ops[0]!;
      for (const candidate of ops) {
        r -= candidate[0];
        if (r < 0) {
          op = candidate;
          break;
        }
      }
      result.operations++;
      say(`op ${result.operations}: ${op[1]}`);
      try {
        await op[2]();
      } catch (err) {
        // The workload may ask for what PostgreSQL refuses (SET TABLESPACE onto where some relations
        // already are, a template still in use): that is the workload's problem, not the backup's.
        const code = (err as { code?: unknown }).code;
        if (typeof code !== 'string' || !/^[0-9A-Z]{5}$/.test(code)) throw err;
        say(`  (${op[1]} refused by PostgreSQL: ${(err as Error).message})`);
      }
    }
    // At least one incremental on top of the last backup, so every run ends with a chain.
    await takeBackup();
    if (result.incrementals === 0) {
      await q("INSERT INTO t1 (k, v) SELECT 1, 'last' FROM generate_series(1, 10)").catch(() => undefined);
      const last = backups[backups.length - 1]!;
      const id = await src.backup(['--parent', last.id]);
      backups.push({ id, parent: last.id, depth: last.depth + 1, snap: await contentSnapshot(c) });
      result.incrementals++;
    }
    await src.archiveCurrentWal();

    const restoreOne = async (what: string, args: string[], expected: Record<string, string>, amcheck: boolean) => {
      const path = freshPath(src, 'chaos');
      const tsPath = freshPath(src, 'chaos-ts');
      const r = await src.restore([
        ...args,
        '-p',
        path,
        '-c',
        '--target-action',
        'promote',
        '--tablespace-map',
        `${tsOid}=${tsPath}`,
      ]);
      if (r.code !== 0) throw new ChaosMismatch(`${tag}: RESTORE of ${what} failed:\n${r.stdout}\n${r.stderr}`);
      let restored: TestCluster | undefined;
      try {
        restored = await startRestored(opts.version, path);
        await waitPromoted(restored);
        let got: Record<string, string>;
        try {
          got = await contentSnapshot(restored);
        } catch (err) {
          throw new ChaosMismatch(
            `${tag}: ${what} cannot be read after restore: ${(err as Error).message}\n${restored.logTail()}`,
          );
        }
        const diff = [...new Set([...Object.keys(expected), ...Object.keys(got)])].filter(
          (k) => !sameContent(k, expected[k], got[k]),
        );
        if (diff.length > 0) {
          throw new ChaosMismatch(
            `${tag}: ${what} restored different content: ${diff
              .slice(0, 5)
              .map((k) => `${k} expected ${expected[k]} got ${got[k]}`)
              .join('; ')}`,
          );
        }
        if (amcheck) {
          const check = await run(clientTool('pg_amcheck'), [
            '-h',
            restored.host,
            '-p',
            String(restored.port),
            '-U',
            'postgres',
            '--all',
            '--install-missing',
            '--heapallindexed',
          ]);
          if (check.code !== 0)
            throw new ChaosMismatch(`${tag}: pg_amcheck failed on ${what}: ${check.stdout}${check.stderr}`);
        }
        result.restores++;
        say(`restored ${what}: ${Object.keys(got).length} objects match${amcheck ? ', pg_amcheck clean' : ''}`);
      } finally {
        await restored?.destroy();
        removeTree(path);
        removeTree(tsPath);
      }
    };
    const info = JSON.parse(
      (await src.setup.bart(['SHOW-BACKUPS', '-s', src.server, '--output', 'json'])).stdout,
    ) as Array<{ id: string; stopLsn: string; startLsn: string }>;
    const lsnOf = (text: string) => {
      const [hi, lo] = text.split('/');
      return (BigInt('0x' + hi) << 32n) + BigInt('0x' + lo);
    };
    for (const [i, b] of backups.entries()) {
      await restoreOne(
        `backup ${b.id} (depth ${b.depth})`,
        ['-i', b.id, '--target-immediate'],
        b.snap,
        opts.amcheckAll === true || i === backups.length - 1,
      );
    }
    for (const [i, p] of points.entries()) {
      // The newest backup consistent before the restore point, replayed forward to it.
      const usable = backups.filter((b) => lsnOf(info.find((x) => x.id === b.id)!.stopLsn) <= lsnOf(p.lsn));
      const base = usable[usable.length - 1];
      if (!base) continue;
      await restoreOne(
        `restore point ${p.name} from backup ${base.id}`,
        ['-i', base.id, '--target-name', p.name],
        p.snap,
        opts.amcheckAll === true || i === points.length - 1,
      );
    }
    return result;
  } catch (err) {
    if (err instanceof ChaosMismatch) throw err;
    throw new ChaosMismatch(`${tag}: ${(err as Error).stack ?? String(err)}`);
  } finally {
    await src.destroy();
  }
}
