import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { acquireLock, serverLockHolder } from '../src/catalog/lock.js';
import { sized } from './harness/test-size.js';

/** Processes contending for the lock each round, and rounds (a slice in npm test, 50 in npm run test:long). */
const PROCESSES = 6;
const ROUNDS = sized(20, 50);

/** The compiled lock module the contenders import (this file runs from dist/test/). */
const LOCK_MODULE = new URL('../src/catalog/lock.js', import.meta.url).href;

/**
 * A contender: on "go" it takes the server lock and, while holding it, creates a marker file with
 * O_EXCL (finding it means another process holds the lock too); on "release" it lets go. It reports
 * each step as a JSON line.
 */
const CONTENDER = `
import { open, unlink } from 'node:fs/promises';
import { createInterface } from 'node:readline';
const { acquireLock } = await import(process.argv[2]);
const [lockDir, marker] = process.argv.slice(3);
const send = (m) => process.stdout.write(JSON.stringify(m) + '\\n');
let lock;
let ownMarker = false;
for await (const line of createInterface({ input: process.stdin })) {
  if (line === 'go') {
    try {
      lock = await acquireLock(lockDir, 'backup', 'BACKUP');
    } catch (err) {
      send({ kind: err.name === 'BartError' ? 'refused' : 'error', message: String(err && err.stack) });
      continue;
    }
    let overlap = false;
    try {
      await (await open(marker, 'wx')).close();
      ownMarker = true;
    } catch (err) {
      if (err.code !== 'EEXIST') throw err;
      overlap = true;
    }
    send({ kind: 'held', overlap });
  } else if (line === 'release') {
    if (ownMarker) await unlink(marker);
    ownMarker = false;
    await lock.release();
    lock = undefined;
    send({ kind: 'released' });
  }
}
`;

interface Report {
  kind: 'held' | 'refused' | 'error' | 'released';
  overlap?: boolean;
  message?: string;
}

/** A contender process with a queue of its reports. */
class Contender {
  readonly child: ChildProcessWithoutNullStreams;
  private readonly queue: Report[] = [];
  private waiter: ((r: Report) => void) | undefined;

  constructor(script: string, lockDir: string, marker: string) {
    this.child = spawn(process.execPath, [script, LOCK_MODULE, lockDir, marker], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    this.child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    this.child.on('close', (code) => this.push({ kind: 'error', message: `contender exited (${code}): ${stderr}` }));
    createInterface({ input: this.child.stdout }).on('line', (line) => this.push(JSON.parse(line) as Report));
  }

  private push(r: Report): void {
    const w = this.waiter;
    this.waiter = undefined;
    if (w) w(r);
    else this.queue.push(r);
  }

  send(line: string): void {
    this.child.stdin.write(`${line}\n`);
  }

  /** The next report (fails the test after 20 s: a contender hung). */
  next(): Promise<Report> {
    const r = this.queue.shift();
    if (r) return Promise.resolve(r);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`contender ${this.child.pid} did not answer`)), 20_000);
      this.waiter = (x) => {
        clearTimeout(timer);
        resolve(x);
      };
    });
  }
}

/** A pid that no process has any more. */
function deadPid(): number {
  return Number(spawnSync('sh', ['-c', 'echo $$']).stdout.toString().trim());
}

/** Start identity of a live process as lock.ts records it (`<boot id>:<start ticks>`). */
function startOf(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const ticks = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  return `${readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()}:${ticks}`;
}

describe('server lock under contention', () => {
  let work: string;
  let lockDir: string;
  let markerDir: string;
  const contenders: Contender[] = [];

  before(() => {
    work = mkdtempSync(join(tmpdir(), 'pgbart-lock-stress-'));
    lockDir = join(work, 'catalog');
    markerDir = join(work, 'markers');
    spawnSync('mkdir', [lockDir, markerDir]);
    writeFileSync(join(work, 'contender.mjs'), CONTENDER);
  });

  after(() => {
    for (const c of contenders) {
      c.child.stdin.end();
      c.child.kill();
    }
    rmSync(work, { recursive: true, force: true });
  });

  test(`${PROCESSES} processes take over a stale lock at once, ${ROUNDS} rounds: one holder each round`, async () => {
    const script = join(work, 'contender.mjs');
    for (let i = 0; i < PROCESSES; i++) contenders.push(new Contender(script, lockDir, join(markerDir, 'holding')));
    const dead = deadPid();
    const lockPath = join(lockDir, 'backup.lock');
    const failures: string[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      // A lock left by a dead BACKUP; every fifth round a damaged one (also stale).
      const started = new Date().toISOString();
      const stale = round % 5 === 4 ? '{"pid": 12' : JSON.stringify({ pid: dead, command: 'BACKUP', started });
      writeFileSync(lockPath, stale);
      for (const c of contenders) c.send('go');
      const reports = await Promise.all(contenders.map((c) => c.next()));
      const holders = contenders.filter((_, i) => reports[i]!.kind === 'held');
      const problems: string[] = [];
      if (holders.length !== 1) problems.push(`${holders.length} holders`);
      if (reports.some((r) => r.overlap)) problems.push('a holder found the marker of another');
      for (const r of reports) if (r.kind === 'error') problems.push(`error: ${r.message}`);
      if (holders.length === 1) {
        // The others refuse naming the one holder, in the usual message.
        const named = new RegExp(
          `^BartError: BACKUP is running for this server \\(pid ${holders[0]!.child.pid}, started \\d{4}-[^)]*\\); ` +
            `try again when it has finished \\(lock file ${lockPath}\\)$`,
        );
        for (const r of reports) {
          if (r.kind === 'refused' && !named.test(r.message!.split('\n')[0]!)) problems.push(`refusal: ${r.message}`);
        }
      }
      for (const h of holders) h.send('release');
      for (const h of holders) {
        const r = await h.next();
        if (r.kind !== 'released') problems.push(`release: ${r.message}`);
      }
      // Nothing is left behind: no lock, no takeover claim, no temp file.
      const left = readdirSync(lockDir);
      if (left.length) problems.push(`left in the catalog: ${left.join(', ')}`);
      for (const name of left) rmSync(join(lockDir, name), { force: true });
      rmSync(join(markerDir, 'holding'), { force: true });
      if (problems.length) failures.push(`round ${round}: ${problems.join('; ')}`);
    }
    assert.deepEqual(failures, [], `${failures.length} of ${ROUNDS} rounds failed`);
  });

  test('holder identity: a live pid refuses; a reused pid, a zombie, an unreadable lock are stale', async () => {
    const dir = join(work, 'identity');
    spawnSync('mkdir', [dir]);
    const lockPath = join(dir, 'backup.lock');
    const sleeper = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      const pid = sleeper.pid!;
      const started = '2026-01-02T03:04:05.000Z';
      const write = (extra: object) => {
        writeFileSync(lockPath, JSON.stringify({ pid, command: 'MANAGE -d', started, ...extra }));
      };
      const refusal = new RegExp(`^MANAGE -d is running for this server \\(pid ${pid}, started ${started}\\); try`);
      // Live, recorded without a start time (older pgbart) or with the right one: refused, named.
      for (const extra of [{}, { procStart: startOf(pid) }]) {
        write(extra);
        const refused = (err: Error) => err.name === 'BartError' && refusal.test(err.message);
        await assert.rejects(acquireLock(dir, 'backup', 'BACKUP'), refused);
        assert.equal((await serverLockHolder(dir))?.pid, pid);
      }
      // The pid now belongs to another process (its start time differs): the lock is stale.
      write({ procStart: `${startOf(pid)}0` });
      assert.equal(await serverLockHolder(dir), undefined);
      await (await acquireLock(dir, 'backup', 'BACKUP')).release();
      assert.deepEqual(readdirSync(dir), []);
    } finally {
      sleeper.kill();
    }
    // A zombie (exited, not reaped: its parent never waits) holds nothing. perl (Debian's essential perl-base), not
    // `sh -c 'sleep 0 & …; exec sleep 30'`: a loaded machine let sh reap the child before it exec'ed (CI, once).
    const parent = spawn('perl', ['-e', '$| = 1; my $pid = fork; exit 0 unless $pid; print "$pid\n"; sleep 30'], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    try {
      const line = await new Promise<string>((r) => parent.stdout.once('data', (d: Buffer) => r(d.toString())));
      const zombie = Number(line.trim());
      const isZombie = () => /\) Z /.test(readFileSync(`/proc/${zombie}/stat`, 'utf8'));
      for (let i = 0; i < 200 && !isZombie(); i++) await new Promise((r) => setTimeout(r, 10));
      assert.ok(isZombie(), `pid ${zombie} is not a zombie`);
      writeFileSync(lockPath, JSON.stringify({ pid: zombie, command: 'BACKUP', started: '2026-01-02T03:04:05.000Z' }));
      await (await acquireLock(dir, 'backup', 'BACKUP')).release();
    } finally {
      parent.kill();
    }
    writeFileSync(lockPath, 'not json');
    await (await acquireLock(dir, 'backup', 'BACKUP')).release();
    assert.deepEqual(readdirSync(dir), []);
  });

  test('a takeover claim left by a killed process is taken over too; a live one is never overridden', async () => {
    const dir = join(work, 'claims');
    spawnSync('mkdir', [dir]);
    const lockPath = join(dir, 'backup.lock');
    const staleWithClaim = (claimant: number) => {
      writeFileSync(lockPath, JSON.stringify({ pid: deadPid(), command: 'DELETE', started: new Date().toISOString() }));
      const st = statSync(lockPath, { bigint: true });
      const claim = join(dir, `.backup.lock.takeover-${st.ino}-${st.mtimeNs}`);
      writeFileSync(claim, JSON.stringify({ pid: claimant, command: 'takeover', started: new Date().toISOString() }));
      return claim;
    };
    // Killed inside its claim: the claim names a dead pid; the next one removes it, then the lock.
    staleWithClaim(deadPid());
    await (await acquireLock(dir, 'backup', 'BACKUP')).release();
    assert.deepEqual(readdirSync(dir), []);
    // A claimant that is alive (here: stopped for good) keeps the stale lock; we give up, not steal.
    const sleeper = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      const claim = staleWithClaim(sleeper.pid!);
      const gaveUp = new RegExp(`^BartError: could not take the lock ${lockPath}$`);
      await assert.rejects(acquireLock(dir, 'backup', 'BACKUP'), gaveUp);
      assert.deepEqual(readdirSync(dir).sort(), [claim.slice(dir.length + 1), 'backup.lock']);
    } finally {
      sleeper.kill();
    }
  });
});
