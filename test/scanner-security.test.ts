/**
 * bart-scanner facing untrusted input: pid files it did not write (naming another process, a
 * symlink, owned by another user or writable by others), the default socket directory, socket
 * requests with absurd ranges, bad fields or endless lines, and MBM files claiming huge counts.
 * Every case gets a one-line error, and nothing is signalled, written or allocated on its word.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { createBartSetup, type BartSetup } from './harness/bart.js';
import { makeTempDir, removeTree, testUserIds } from './harness/os.js';
import { waitFor } from './harness/wait.js';
import { prng } from './harness/prng.js';
import { bartScanner, killScanner, scannerPid } from './harness/scanner.js';
import { REPO_ROOT } from './harness/pg-binaries.js';
import { loadConfig } from '../src/config/parse-config.js';
import { BartError } from '../src/util/errors.js';
import { crc32cRange } from '../src/wal/crc32c.js';
import { decodeMbm, encodeMbm } from '../src/scanner/mbm-format.js';
import type { ModifiedBlockMap } from '../src/scanner/modified-block-map.js';
import { loadChangeSet } from '../src/scanner/change-set.js';
import { requestMbms } from '../src/scanner/client.js';

const SEG = 16 * 1024 * 1024;
const ids = testUserIds();
const needsRoot = ids ? false : 'needs root (files and processes of another user)';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** A `sleep` running as the BART (test) user: a live process of the right user that is no scanner. */
function sleeper(): ChildProcess {
  return spawn('sleep', ['300'], { uid: ids!.uid, gid: ids!.gid, stdio: 'ignore' });
}

/** Writes the pid file as root, then gives it the owner and mode asked for. */
function writePidFile(setup: BartSetup, pid: number, owner: 'bart' | 'root', mode: number): string {
  const f = join(setup.dir, 'bart_scanner.pid');
  if (lstatSync(f, { throwIfNoEntry: false })) unlinkSync(f);
  writeFileSync(f, `${pid}\n`);
  if (owner === 'bart') chownSync(f, ids!.uid, ids!.gid);
  chmodSync(f, mode);
  return f;
}

/** An assert.throws/rejects validator: a BartError whose message matches `re`. */
function bartError(re: RegExp): (e: unknown) => boolean {
  return (e) => e instanceof BartError && re.test(e.message);
}

function assertOneLineError(stderr: string, re: RegExp, what: string): void {
  assert.match(stderr, /^ERROR: /m, `${what}: ${stderr}`);
  assert.match(stderr, re, `${what}: ${stderr}`);
  assert.doesNotMatch(stderr, /^\s+at /m, `${what}: no stack trace`);
}

const PID_OF_OTHER = 'STOP and RELOAD refuse a pid file naming another process of the BART user; that process lives';
test(PID_OF_OTHER, { skip: needsRoot }, async () => {
  const setup = createBartSetup();
  const child = sleeper();
  try {
    await waitFor('sleep child', () => child.pid !== undefined && alive(child.pid), { timeoutMs: 5000 });
    writePidFile(setup, child.pid!, 'bart', 0o600);
    for (const action of ['RELOAD', 'STOP']) {
      const r = await bartScanner(setup.configPath, [action]);
      assert.notEqual(r.code, 0, `${action} refused`);
      const why = `names pid ${child.pid}, which is not this configuration's bart-scanner \\(it is not bart-scanner`;
      assertOneLineError(r.stderr, new RegExp(why), action);
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(child.exitCode, null, `${action}: the sleep child still runs`);
      assert.equal(child.signalCode, null, `${action}: the sleep child got no signal`);
    }
  } finally {
    child.kill('SIGKILL');
    setup.cleanup();
  }
});

const FOREIGN_PID_FILE = 'STOP refuses a pid file owned by another user or writable by others, then obeys a good one';
test(FOREIGN_PID_FILE, { skip: needsRoot }, async () => {
  const setup = createBartSetup();
  try {
    const started = await bartScanner(setup.configPath, ['--daemon']);
    assert.equal(started.code, 0, started.stderr);
    const pid = scannerPid(setup.dir)!;
    assert.ok(pid, 'the scanner wrote its pid file');
    const st = statSync(join(setup.dir, 'bart_scanner.pid'));
    assert.equal(st.mode & 0o777, 0o600, 'pid file mode 0600');
    assert.equal(st.uid, ids!.uid, 'pid file owned by the BART user');

    // The same (right) pid, but in a file root wrote: not the BART user's, so not trusted.
    writePidFile(setup, pid, 'root', 0o644);
    let r = await bartScanner(setup.configPath, ['STOP']);
    assert.notEqual(r.code, 0, 'root-owned pid file refused');
    assertOneLineError(r.stderr, /pid file .* belongs to uid 0, not to the BART user/, 'root-owned');
    assert.ok(alive(pid), 'the scanner still runs');

    writePidFile(setup, pid, 'bart', 0o666);
    r = await bartScanner(setup.configPath, ['RELOAD']);
    assert.notEqual(r.code, 0, 'world-writable pid file refused');
    assertOneLineError(r.stderr, /pid file .* is writable by others \(mode 666\)/, 'mode 0666');
    assert.ok(alive(pid), 'the scanner still runs');

    chmodSync(join(setup.dir, 'bart_scanner.pid'), 0o600);
    r = await bartScanner(setup.configPath, ['STOP']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(alive(pid), false, 'stopped');
    assert.equal(existsSync(join(setup.dir, 'bart_scanner.pid')), false, 'its pid file removed');
  } finally {
    killScanner(setup.dir);
    setup.cleanup();
  }
});

const SYMLINK = 'the daemon creates its pid file without following a symlink; replaces a stale one only if ours';
test(SYMLINK, { skip: needsRoot }, async () => {
  const setup = createBartSetup();
  const pidFile = join(setup.dir, 'bart_scanner.pid');
  const logOf = () => readFileSync(join(setup.dir, 'bart_scanner.log'), 'utf8');
  try {
    // A symlink to an existing file of the BART user, then a dangling one.
    const victim = join(setup.dir, 'victim');
    writeFileSync(victim, 'precious\n');
    chownSync(victim, ids!.uid, ids!.gid);
    symlinkSync(victim, pidFile);
    let r = await bartScanner(setup.configPath, ['--daemon']);
    assert.notEqual(r.code, 0, 'start refused with a symlinked pid file');
    assert.equal(readFileSync(victim, 'utf8'), 'precious\n', 'the link target is untouched');
    assert.match(logOf(), /ERROR: the scanner pid file ".*bart_scanner.pid" is a symbolic link: refusing to use it/);
    assert.equal(existsSync(join(setup.dir, 'bart_scanner.sock')), false, 'no socket either');
    unlinkSync(pidFile);
    const through = join(setup.dir, 'created-through-link');
    symlinkSync(through, pidFile);
    r = await bartScanner(setup.configPath, ['--daemon']);
    assert.notEqual(r.code, 0, 'start refused with a dangling symlink as pid file');
    assert.equal(existsSync(through), false, 'nothing created through the link');
    unlinkSync(pidFile);

    // A stale pid file of another user: refused, not removed.
    const gone = spawn('true', { stdio: 'ignore' });
    await new Promise((res) => gone.on('exit', res));
    writePidFile(setup, gone.pid!, 'root', 0o644);
    r = await bartScanner(setup.configPath, ['--daemon']);
    assert.notEqual(r.code, 0, 'start refused with a root-owned stale pid file');
    assert.match(logOf(), /pid file .* belongs to uid 0, not to the BART user/);
    assert.equal(readFileSync(pidFile, 'utf8'), `${gone.pid}\n`, 'the foreign file is left alone');

    // A stale pid file of ours (its process is dead): replaced.
    writePidFile(setup, gone.pid!, 'bart', 0o600);
    r = await bartScanner(setup.configPath, ['--daemon']);
    assert.equal(r.code, 0, r.stderr);
    const pid = scannerPid(setup.dir);
    assert.ok(pid && pid !== gone.pid, 'the new pid is in the pid file');
    assert.equal(lstatSync(pidFile).mode & 0o777, 0o600);
    r = await bartScanner(setup.configPath, ['STOP']);
    assert.equal(r.code, 0, r.stderr);
  } finally {
    killScanner(setup.dir);
    setup.cleanup();
  }
});

const FOREGROUND = 'STOP stops a scanner started as root in the foreground (it switched users in place)';
test(FOREGROUND, { skip: needsRoot }, async () => {
  const setup = createBartSetup();
  // Such a process is not dumpable, and on most kernels its /proc entries then belong to root
  // whatever user it runs as: STOP must go by the uid it runs as.
  const bin = join(REPO_ROOT, 'bin', 'bart-scanner.js');
  const fg = spawn(process.execPath, [bin, '-c', setup.configPath], { stdio: 'ignore' });
  try {
    await waitFor('the foreground scanner', () => scannerPid(setup.dir) === fg.pid, { timeoutMs: 15_000 });
    const uidLine = new RegExp(`^Uid:\\s+${ids!.uid}\\s+${ids!.uid}\\s`, 'm');
    assert.match(readFileSync(`/proc/${fg.pid}/status`, 'utf8'), uidLine, 'runs as the BART user');
    const r = await bartScanner(setup.configPath, ['STOP']);
    assert.equal(r.code, 0, r.stderr);
    await waitFor('exit', () => fg.exitCode !== null, { timeoutMs: 10_000 });
    assert.equal(fg.exitCode, 0);
  } finally {
    fg.kill('SIGKILL');
    setup.cleanup();
  }
});

/** Sends raw bytes on the scanner socket; resolves with the first answer line, rejects on timeout or close. */
function rawAsk(sockPath: string, payload: Buffer | string, timeoutMs: number): Promise<Record<string, unknown>> {
  return new Promise((resolvePromise, reject) => {
    const sock = createConnection(sockPath);
    let data = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(payload));
    sock.on('error', () => undefined);
    sock.on('data', (c: string) => {
      data += c;
      const nl = data.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      sock.destroy();
      resolvePromise(JSON.parse(data.slice(0, nl)) as Record<string, unknown>);
    });
    sock.on('close', () => {
      clearTimeout(timer);
      reject(new Error(`connection closed without an answer (${data.length} bytes read)`));
    });
  });
}

const SOCKET = 'socket requests: an absurd LSN range, bad fields and an oversized line are refused at once';
test(SOCKET, async () => {
  const setup = createBartSetup();
  const arch = join(setup.dir, 'arch');
  mkdirSync(arch);
  if (ids) chownSync(arch, ids.uid, ids.gid);
  const owner = ids ? 'postgres' : process.env.USER;
  const section =
    `[srv]\nhost = 127.0.0.1\nport = 5999\nuser = postgres\ncluster_owner = ${owner}\n` +
    `allow_incremental_backups = enabled\narchive_path = ${arch}\n`;
  setup.writeConfig(readFileSync(setup.configPath, 'utf8') + '\n' + section);
  const sockPath = join(setup.dir, 'bart_scanner.sock');
  try {
    const started = await bartScanner(setup.configPath, ['--daemon']);
    assert.equal(started.code, 0, started.stderr);
    const pid = scannerPid(setup.dir)!;
    const ping = async (what: string) => {
      const p = await rawAsk(sockPath, '{"op":"ping"}\n', 5000);
      assert.equal(p.ok, true, `${what}: ping answered`);
      assert.equal(p.pid, pid, `${what}: by the scanner`);
    };

    const base = { op: 'ensure', server: 'srv', timeline: 1, startLsn: '0/0', endLsn: '0/1000000', timeoutSec: 0 };
    const ensure = (fields: Record<string, unknown>) => JSON.stringify({ ...base, ...fields }) + '\n';
    const huge = await rawAsk(sockPath, ensure({ endLsn: 'FFFFFFFF/0' }), 5000);
    assert.equal(huge.ok, false);
    const tooBig = /LSN range 0\/0\.\.FFFFFFFF\/0 spans 1099511627521 WAL segments, more than the 1000000 one request/;
    assert.match(String(huge.error), tooBig);
    // Refused at once: before the fix the daemon never answered (rawAsk's 5 s limit); no timing is asserted.
    await ping('after the absurd range');

    const bad: Array<[string, RegExp]> = [
      ['not json\n', /request is not JSON/],
      ['null\n', /not a JSON object/],
      ['[1,2]\n', /not a JSON object/],
      ['{"op":"nope"}\n', /unknown request "nope"/],
      [ensure({ server: 5 }), /"server" must be a server name/],
      [ensure({ timeline: 'x' }), /"timeline" must be an integer/],
      [ensure({ timeline: 0 }), /"timeline" must be an integer/],
      [ensure({ startLsn: 'zz' }), /"startLsn" must be an LSN/],
      [ensure({ endLsn: ' 0/10' }), /"endLsn" must be an LSN/],
      [ensure({ startLsn: '2/0', endLsn: '1/0' }), /range 2\/0\.\.1\/0 ends before it starts/],
      [ensure({ segmentSize: 3 }), /invalid WAL segment size 3/],
      [ensure({ segmentSize: 1024 * 1024, endLsn: '1000/0' }), /spans \d+ WAL segments/],
      [ensure({ timeoutSec: -1 }), /"timeoutSec" must be a number of seconds/],
      [ensure({ timeoutSec: 1e12 }), /"timeoutSec" must be a number of seconds/],
    ];
    for (const [line, re] of bad) {
      const r = await rawAsk(sockPath, line, 5000);
      assert.equal(r.ok, false, line);
      assert.match(String(r.error), re, line);
    }
    // A good ensure still works (an empty archive: the WAL is missing, nothing else).
    const good = await rawAsk(sockPath, ensure({}), 5000);
    assert.equal(good.ok, true, JSON.stringify(good));
    assert.deepEqual(good.missingWal, ['000000010000000000000000']);

    // 1 MiB without a newline: an error answer, not a growing buffer.
    const long = await rawAsk(sockPath, Buffer.alloc(1024 * 1024, 0x78), 5000);
    assert.equal(long.ok, false);
    assert.match(String(long.error), /request line longer than 65536 bytes/);
    await ping('after the oversized line');

    // The client side has the same bound: no request is sent, and no local scan builds the list.
    const config = loadConfig(setup.configPath);
    const srv = config.servers.find((s) => s.name === 'srv')!;
    const absurd = { timeline: 1, startLsn: 0n, endLsn: 0xffffffff00000000n };
    await assert.rejects(requestMbms(config, srv, absurd, 1), bartError(/spans \d+ WAL segments/));
    await assert.rejects(loadChangeSet(arch, absurd), bartError(/spans \d+ WAL segments/));

    // Seeded fuzz: mutated requests each get one answer (ok or an error), and the daemon stays responsive.
    const seed = Number(process.env.PGBART_FUZZ_SEED ?? Date.now() % 2 ** 31);
    console.log(`socket request fuzz seed ${seed} (PGBART_FUZZ_SEED replays it)`);
    const rand = prng(seed);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
    const values = [
      null,
      true,
      -1,
      0,
      1,
      1.5,
      2 ** 53,
      1e308,
      '',
      'x',
      '0/0',
      '0/FFFFFFFF',
      '1/0',
      'FFFFFFFF/0',
      'FFFFFFFF/FFFFFFFF',
      '-1/0',
      '0/1000000',
      [],
      {},
      'srv',
      '../etc',
      'a\u0000b',
    ];
    const fields = [...Object.keys(base), 'segmentSize', 'extra'];
    for (let i = 0; i < 150; i++) {
      const req: Record<string, unknown> = { ...base };
      for (let n = 1 + Math.floor(rand() * 3); n > 0; n--) {
        const field = pick(fields);
        if (rand() < 0.2) delete req[field];
        else req[field] = pick(values);
      }
      let line = JSON.stringify(req);
      if (rand() < 0.3) {
        const at = Math.floor(rand() * line.length);
        line = line.slice(0, at) + String.fromCharCode(32 + Math.floor(rand() * 95)) + line.slice(at + 1);
      }
      const answer = await rawAsk(sockPath, line + '\n', 5000);
      assert.equal(typeof answer.ok, 'boolean', `seed ${seed}, request ${i}: ${line}`);
      if (!answer.ok) assert.equal(typeof answer.error, 'string', `seed ${seed}, request ${i}: ${line}`);
    }
    await ping(`after the fuzzed requests (seed ${seed})`);

    const stop = await bartScanner(setup.configPath, ['STOP']);
    assert.equal(stop.code, 0, stop.stderr);
  } finally {
    killScanner(setup.dir);
    setup.cleanup();
  }
});

/** A valid one-fork MBM with the block list [5]. */
function oneForkMbm(): Buffer {
  const m: ModifiedBlockMap = {
    timeline: 1,
    startLsn: 0x1000028n,
    endLsn: 0x2000000n,
    systemId: 42n,
    segmentSize: SEG,
    walMagic: 0xd110,
    endedWithSwitch: false,
    records: 1,
    events: [],
    relations: [{ spcOid: 1663, dbOid: 5, relNumber: 16384, fork: 0, limit: null, blocks: Uint32Array.from([5]) }],
  };
  return encodeMbm(m);
}

/** Re-seals a patched MBM with a correct CRC, so only the patched field is wrong. */
function reseal(buf: Buffer): Buffer {
  buf.writeUInt32LE(crc32cRange(buf, 0, buf.length - 4, 0), buf.length - 4);
  return buf;
}

test('MBM files claiming huge counts are refused before anything is allocated', async () => {
  // Header (72 bytes), then the fork entry: 12 bytes of ids, fork/flags (4), limit (4), run count
  // (4) at 92, the run (first, count) at 96 and 100.
  const manyForks = Buffer.from(oneForkMbm());
  manyForks.writeUInt32LE(0xffffffff, 56);
  const forksMsg = /at byte offset 56: 4294967295 relation fork entries and 0 events cannot fit in the 32 bytes/;
  assert.throws(() => decodeMbm(reseal(manyForks), 'many-forks'), bartError(forksMsg));
  const manyEvents = Buffer.from(oneForkMbm());
  manyEvents.writeUInt32LE(0x10000000, 60);
  assert.throws(() => decodeMbm(reseal(manyEvents), 'many-events'), bartError(/cannot fit/));

  const manyBlocks = Buffer.from(oneForkMbm());
  manyBlocks.writeUInt32LE(100_000_000, 100);
  const blocksMsg = /at byte offset 100: more modified blocks than a WAL segment of 16777216 bytes can reference/;
  assert.throws(() => decodeMbm(reseal(manyBlocks), 'many-blocks'), bartError(blocksMsg));

  const wraps = Buffer.from(oneForkMbm());
  wraps.writeUInt32LE(0xfffffff0, 96);
  wraps.writeUInt32LE(0x20, 100);
  const wrapsMsg = /block run 4294967280\+32 goes past the last block number/;
  assert.throws(() => decodeMbm(reseal(wraps), 'wraps'), bartError(wrapsMsg));

  const badSegSize = Buffer.from(oneForkMbm());
  badSegSize.writeUInt32LE(0xffffffff, 20);
  const segMsg = /WAL segment size 4294967295 is not a power of two/;
  assert.throws(() => decodeMbm(reseal(badSegSize), 'segsize'), bartError(segMsg));

  // Seeded fuzz: random bytes of a valid MBM changed (and the CRC resealed half of the time, so the
  // field checks are reached): decoding either succeeds or throws a BartError, never anything else.
  const seed = Number(process.env.PGBART_FUZZ_SEED ?? Date.now() % 2 ** 31);
  console.log(`MBM fuzz seed ${seed} (PGBART_FUZZ_SEED replays it)`);
  const rand = prng(seed);
  for (let i = 0; i < 3000; i++) {
    const buf = Buffer.from(oneForkMbm());
    for (let n = 1 + Math.floor(rand() * 4); n > 0; n--)
      buf[Math.floor(rand() * buf.length)] = Math.floor(rand() * 256);
    const cut = rand() < 0.1 ? buf.subarray(0, Math.floor(rand() * buf.length)) : buf;
    try {
      decodeMbm(rand() < 0.5 && cut.length >= 8 ? reseal(Buffer.from(cut)) : cut, `fuzz-${i}`);
    } catch (err) {
      assert.ok(err instanceof BartError, `seed ${seed}, case ${i}: ${String(err)}`);
    }
  }

  // The untouched file still decodes, and bart-scanner -p gives a one-line error for a bad one.
  assert.deepEqual([...decodeMbm(oneForkMbm(), 'good').relations[0]!.blocks], [5]);
  const setup = createBartSetup();
  try {
    const f = join(setup.dir, 'wraps.mbm');
    writeFileSync(f, wraps);
    const r = await bartScanner(setup.configPath, ['-p', f]);
    assert.equal(r.code, 1, r.stdout);
    assertOneLineError(r.stderr, /^ERROR: +invalid MBM file ".*wraps\.mbm" at byte offset 96: block run/m, '-p');
    assert.equal(r.stderr.trim().split('\n').length, 1, 'one line');
  } finally {
    setup.cleanup();
  }
});

const SOCKET_DIR = 'the default socket directory is a private /tmp/bart-<uid>; a foreign or loose one refused or fixed';
test(SOCKET_DIR, async () => {
  // Imported here so that this test, not the whole file, fails on a pgbart without these functions.
  const paths = (await import('../src/scanner/paths.js')) as Record<string, unknown>;
  assert.equal(typeof paths.ensurePrivateDirectory, 'function', 'ensurePrivateDirectory exists');
  const ensurePrivateDirectory = paths.ensurePrivateDirectory as (dir: string, create: boolean) => boolean;
  const scannerSocketPath = paths.scannerSocketPath as (c: unknown) => string;

  // Without bart_socket_directory: the per-user directory (an explicit one is used as is).
  const setup = createBartSetup();
  const work = makeTempDir('sockdir');
  try {
    const explicit = loadConfig(setup.configPath);
    assert.equal(scannerSocketPath(explicit), join(setup.dir, 'bart_scanner.sock'));
    setup.writeConfig(readFileSync(setup.configPath, 'utf8').replace(/^bart_socket_directory = .*\n/m, ''));
    const byDefault = loadConfig(setup.configPath);
    assert.equal(scannerSocketPath(byDefault), `/tmp/bart-${process.geteuid!()}/bart_scanner.sock`);

    const d = join(work, 'bart-x');
    assert.equal(ensurePrivateDirectory(d, false), false, 'missing, not created: no scanner can run');
    assert.equal(existsSync(d), false);
    assert.equal(ensurePrivateDirectory(d, true), true);
    assert.equal(statSync(d).mode & 0o777, 0o700, 'created 0700');
    chmodSync(d, 0o777);
    ensurePrivateDirectory(d, false);
    assert.equal(statSync(d).mode & 0o777, 0o700, 'a loose mode of our own directory is fixed');
    if (ids) {
      chownSync(d, ids.uid, ids.gid);
      const foreign = new RegExp(`"${d}" belongs to uid ${ids.uid}, not to the BART user`);
      assert.throws(() => ensurePrivateDirectory(d, true), bartError(foreign));
    }
    removeTree(d);
    symlinkSync(work, d);
    assert.throws(() => ensurePrivateDirectory(d, true), bartError(/is not a directory/));
    unlinkSync(d);
    writeFileSync(d, '');
    assert.throws(() => ensurePrivateDirectory(d, false), bartError(/is not a directory/));
  } finally {
    setup.cleanup();
    removeTree(work);
  }
});
