import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, createHmac, randomBytes, randomUUID } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { freePort } from './cluster.js';

/** The Debian programs {@link TestS3} runs (packages radosgw, ceph-mon, ceph-osd and their dependency ceph-common). */
const PROGRAMS = ['monmaptool', 'osdmaptool', 'ceph-mon', 'ceph-osd', 'radosgw', 'radosgw-admin'];

/** True when every program {@link TestS3} needs is on PATH (tests skip otherwise: `scripts/install-deps.sh`). */
export function radosgwInstalled(): boolean {
  const dirs = (process.env.PATH ?? '/usr/bin').split(delimiter);
  return PROGRAMS.every((p) => dirs.some((d) => d !== '' && existsSync(join(d, p))));
}

/** Options for {@link TestS3.start}. */
export interface TestS3Options {
  /**
   * The OSD's object store. `memstore` (default) starts in ~3 s but keeps every stored byte in RAM (about twice
   * over); `bluestore` on a sparse file starts in ~7 s and keeps RAM bounded, for multi-GB tests.
   */
  store?: 'memstore' | 'bluestore';
  /** Size of the sparse bluestore file (default 64 GiB; only what is written takes disk space). */
  bluestoreBytes?: number;
  /**
   * Also serve HTTPS with a self-signed certificate for 127.0.0.1 ({@link TestS3.certFile}); {@link TestS3.endpoint}
   * is then the https one (pgBackRest accepts nothing else). HTTP stays available at {@link TestS3.httpEndpoint}.
   */
  tls?: boolean;
  /** Deadline for the whole start, in ms (default 90 s). */
  timeoutMs?: number;
}

/** A daemon the harness started, with its log for failure messages. */
interface Daemon {
  name: string;
  child: ChildProcess;
  exited: Promise<void>;
}

/** Every server not yet stopped, killed (synchronously) when the test process exits, even after a failure. */
const live = new Set<TestS3>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const s of live) s.killSync();
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Random characters from `alphabet` (rejection-free modulo is fine here: these are test credentials). */
function randomString(length: number, alphabet: string): string {
  return [...randomBytes(length)].map((b) => alphabet[b % alphabet.length]).join('');
}

const sha256 = (data: string) => createHash('sha256').update(data).digest('hex');
const hmac = (key: Buffer | string, data: string) => createHmac('sha256', key).update(data).digest();

/**
 * A real S3 server for tests: Ceph RADOS Gateway (Debian's radosgw 16.2) with one monitor and one OSD, all in one
 * private directory under os.tmpdir(), on 127.0.0.1 and free ports, with one S3 user whose keys are random.
 * The daemons run as the current user (root in the suite: they are test infrastructure, not the system under test).
 * Always call {@link stop}; a process exit kills whatever is left.
 *
 * The harness needs no S3 client: the user is made with radosgw-admin and {@link createBucket} signs its one request
 * itself. Clients must use path-style addressing and `requestChecksumCalculation: 'WHEN_REQUIRED'` (this radosgw
 * answers 411 to the SDK's default streaming checksums): {@link clientConfig} has the settings.
 */
export class TestS3 {
  /** Region the credentials are scoped to (radosgw accepts any; clients need one). */
  readonly region = 'us-east-1';
  /** The S3 user's access key id. */
  readonly accessKey = randomString(20, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789');
  /** The S3 user's secret key. */
  readonly secretKey = randomString(40, 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/');
  /** Milliseconds each start step took (mon, osd, user, rgw, total), for the debug line and reports. */
  readonly timings: Record<string, number> = {};
  private readonly daemons = new Map<string, Daemon>();
  /** Short-lived CLI processes (ceph, radosgw-admin) still running, so a failed start can kill them too. */
  private readonly tools = new Set<ChildProcess>();
  private stopped = false;

  private constructor(
    /** Private directory holding ceph.conf, every daemon's data, logs, sockets and the TLS files. */
    readonly dir: string,
    private readonly monPort: number,
    /** Port of radosgw's plain-HTTP listener. */
    readonly httpPort: number,
    /** Port of radosgw's HTTPS listener, when started with `tls`. */
    readonly httpsPort: number | undefined,
    private readonly opts: TestS3Options,
  ) {}

  /** `http://127.0.0.1:PORT` (always served). */
  get httpEndpoint(): string {
    return `http://127.0.0.1:${this.httpPort}`;
  }

  /** The endpoint tests should use: https when started with `tls`, else {@link httpEndpoint}. */
  get endpoint(): string {
    return this.httpsPort === undefined ? this.httpEndpoint : `https://127.0.0.1:${this.httpsPort}`;
  }

  /** The self-signed certificate (PEM, also its own CA) of the HTTPS listener, when started with `tls`. */
  get certFile(): string | undefined {
    return this.httpsPort === undefined ? undefined : join(this.dir, 'tls', 'cert.pem');
  }

  /** Process ids of the running daemons (monitor, OSD, radosgw), for RSS measurements and leak checks. */
  get pids(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [name, d] of this.daemons) if (d.child.pid !== undefined) out[name] = d.child.pid;
    return out;
  }

  /**
   * Settings for `new S3Client(...)` of `@aws-sdk/client-s3` (a plain object: the harness does not load the SDK).
   * With `tls`, pass a request handler that trusts {@link certFile} (or skips verification) yourself.
   */
  clientConfig(): {
    endpoint: string;
    region: string;
    credentials: { accessKeyId: string; secretAccessKey: string };
    forcePathStyle: true;
    requestChecksumCalculation: 'WHEN_REQUIRED';
    responseChecksumValidation: 'WHEN_REQUIRED';
  } {
    return {
      endpoint: this.endpoint,
      region: this.region,
      credentials: { accessKeyId: this.accessKey, secretAccessKey: this.secretKey },
      forcePathStyle: true,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    };
  }

  /** Creates, starts and waits for monitor, OSD and radosgw, and creates the S3 user. */
  static async start(opts: TestS3Options = {}): Promise<TestS3> {
    installExitHook();
    const t0 = Date.now();
    const dir = mkdtempSync(join(tmpdir(), 'pgbart-s3-'));
    let s3: TestS3 | undefined;
    try {
      const monPort = await freePort();
      const httpPort = await freePort();
      const httpsPort = opts.tls ? await freePort() : undefined;
      s3 = new TestS3(dir, monPort, httpPort, httpsPort, opts);
      live.add(s3);
      await s3.setUp(Date.now() + (opts.timeoutMs ?? 90_000));
    } catch (err) {
      if (s3) await s3.stop();
      else rmSync(dir, { recursive: true, force: true });
      throw new Error(`TestS3 in ${dir} (removed): ${(err as Error).message}`);
    }
    s3.timings.total = Date.now() - t0;
    if (process.env.PGBART_TEST_TIMING) {
      const steps = Object.entries(s3.timings)
        .map(([k, v]) => `${k} ${v} ms`)
        .join(', ');
      console.error(`# s3: radosgw (${opts.store ?? 'memstore'}) at ${s3.endpoint} started: ${steps}`);
    }
    return s3;
  }

  private async setUp(deadline: number): Promise<void> {
    const { dir } = this;
    for (const d of ['run', 'log', 'osd.0', 'rgw']) mkdirSync(join(dir, d));
    const conf = this.confFile;
    const fsid = randomUUID();
    writeFileSync(conf, this.cephConf(fsid));
    let t = Date.now();
    const step = (name: string) => {
      this.timings[name] = Date.now() - t;
      t = Date.now();
    };

    // The monitor starts with an OSD map that already holds osd.0 (instead of `ceph osd new` after it is up: that
    // Python CLI costs seconds); `mon osd auto mark in` puts it in when it boots. Authentication is off: no keyring.
    // The OSD's mkfs needs neither a monitor nor its config: it runs beside the monitor's.
    const [monmap, osdmap] = [join(dir, 'monmap'), join(dir, 'osdmap')];
    const mon = async () => {
      await Promise.all([
        this.tool(deadline, 'monmaptool', ['--create', '--fsid', fsid, '--addv', 'a', this.monAddr, monmap]),
        this.tool(deadline, 'osdmaptool', ['-c', conf, '--createsimple', '1', osdmap]),
      ]);
      await this.tool(deadline, 'ceph-mon', ['-c', conf, '--mkfs', '-i', 'a', '--monmap', monmap, '--osdmap', osdmap]);
      this.launch('mon.a', 'ceph-mon', ['-f', '-c', conf, '-i', 'a']);
      step('mon');
    };
    const osdMkfs = ['-c', conf, '-i', '0', '--mkfs', '--no-mon-config', '--osd-uuid', randomUUID()];
    await Promise.all([mon(), this.tool(deadline, 'ceph-osd', osdMkfs)]);
    this.launch('osd.0', 'ceph-osd', ['-f', '-c', conf, '-i', '0']);
    step('osd');

    // radosgw-admin blocks until the OSD is up (its writes wait for an active placement group), so no polling.
    const user = ['user', 'create', '--uid=pgbart-test', '--display-name=pgbart test'];
    const keys = [`--access-key=${this.accessKey}`, `--secret-key=${this.secretKey}`];
    await this.tool(deadline, 'radosgw-admin', ['-c', conf, ...user, ...keys]);
    step('user');

    if (this.httpsPort !== undefined) {
      mkdirSync(join(dir, 'tls'));
      const key = join(dir, 'tls', 'key.pem');
      const subject = ['-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'];
      const req = ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '7'];
      req.push('-keyout', key, '-out', this.certFile!);
      await this.tool(deadline, 'openssl', [...req, ...subject]);
      step('tls');
    }
    await this.startRgw(deadline);
    step('rgw');
  }

  /** The monitor's messenger v2 address. */
  private get monAddr(): string {
    return `[v2:127.0.0.1:${this.monPort}]`;
  }

  private get confFile(): string {
    return join(this.dir, 'ceph.conf');
  }

  /** ceph.conf: see "A real S3 server" in machine-notes.md for why each setting is there. */
  private cephConf(fsid: string): string {
    const { dir } = this;
    const bluestore = this.opts.store === 'bluestore';
    let frontend = `beast endpoint=127.0.0.1:${this.httpPort}`;
    if (this.httpsPort !== undefined) {
      const tls = join(dir, 'tls');
      frontend += ` ssl_endpoint=127.0.0.1:${this.httpsPort}`;
      frontend += ` ssl_certificate=${tls}/cert.pem ssl_private_key=${tls}/key.pem`;
    }
    return [
      '[global]',
      `fsid = ${fsid}`,
      `mon host = ${this.monAddr}`,
      'mon initial members = a',
      'public addr = 127.0.0.1',
      'auth cluster required = none',
      'auth service required = none',
      'auth client required = none',
      // Without it radosgw hangs 300 s at start (get_initial_auth_request returned -13).
      'ms mon client mode = crc',
      'client mount timeout = 30',
      // A client whose first request finds no OSD up asks for a newer map only on this tick (default 5 s).
      'objecter tick interval = 0.1',
      // A killed radosgw's watches (its cache notifications) linger this long, and every metadata change made
      // meanwhile (radosgw-admin bucket rm, a restarted radosgw) waits for them: default 30 s. Live clients ping
      // their watches on every objecter tick, so 5 s is ample.
      'osd client watch timeout = 5',
      'osd pool default size = 1',
      'osd pool default min size = 1',
      'osd pool default pg num = 8',
      'osd pool default pgp num = 8',
      'osd pool default pg autoscale mode = off',
      'osd crush chooseleaf type = 0',
      'mon allow pool size one = true',
      'mon osd auto mark in = true',
      'mon warn on pool no redundancy = false',
      // radosgw creates 7 pools at its first start, each a paxos round: the defaults make that take ~15 s.
      'paxos propose interval = 0.05',
      'paxos min wait = 0.01',
      `run dir = ${dir}/run`,
      `pid file = ${dir}/run/$name.pid`,
      // $pid: several clients with one name (ceph, radosgw-admin) may run at once.
      `admin socket = ${dir}/run/$name.$pid.asok`,
      `log file = ${dir}/log/$name.log`,
      `mon data = ${dir}/mon.$id`,
      `osd data = ${dir}/osd.$id`,
      ...(bluestore
        ? [
            'osd objectstore = bluestore',
            'bluestore block create = true',
            `bluestore block size = ${this.opts.bluestoreBytes ?? 64 * 2 ** 30}`,
            'bluestore fsck on mkfs = false',
          ]
        : // memstore reports this as its capacity (it allocates only what is stored): room before "OSD full".
          ['osd objectstore = memstore', `memstore device bytes = ${64 * 2 ** 30}`]),
      '',
      '[client.rgw]',
      `rgw frontends = ${frontend}`,
      `rgw data = ${dir}/rgw`,
      // Deleted objects' data is removed by garbage collection, by default only after 2 h: memstore holds it in RAM.
      'rgw gc obj min wait = 60',
      'rgw gc processor period = 60',
      '',
    ].join('\n');
  }

  /** Starts a daemon in the foreground (-f) as a child of this process, its stdout/stderr going to log/NAME.out. */
  private launch(name: string, program: string, args: string[]): Daemon {
    const out = openSync(join(this.dir, 'log', `${name}.out`), 'a');
    let child: ChildProcess;
    try {
      child = spawn(program, args, { stdio: ['ignore', out, out], env: { ...process.env, CEPH_CONF: this.confFile } });
    } finally {
      closeSync(out);
    }
    const exited = new Promise<void>((resolvePromise) => {
      if (child.exitCode !== null || child.signalCode !== null) resolvePromise();
      else child.once('exit', () => resolvePromise());
    });
    child.on('error', () => undefined); // spawn failures show as an exit; the caller reports them
    const daemon = { name, child, exited };
    this.daemons.set(name, daemon);
    return daemon;
  }

  /** Runs a CLI program to completion (killed at the deadline) and returns its stdout; throws with its output. */
  private tool(deadline: number, program: string, args: string[]): Promise<string> {
    return new Promise((resolvePromise, reject) => {
      const env = { ...process.env, CEPH_CONF: this.confFile };
      const child = spawn(program, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
      this.tools.add(child);
      let stdout = '';
      let stderr = '';
      child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      const timer = setTimeout(() => child.kill('SIGKILL'), Math.max(0, deadline - Date.now()));
      child.on('error', (err) => {
        clearTimeout(timer);
        this.tools.delete(child);
        reject(new Error(`${program}: ${err.message}`));
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        this.tools.delete(child);
        if (code === 0) resolvePromise(stdout);
        else {
          const why = signal === 'SIGKILL' && Date.now() >= deadline ? 'timed out' : `exited ${code ?? signal}`;
          reject(new Error(`${program} ${args.join(' ')} ${why}\n${stdout}${stderr}${this.logTails()}`));
        }
      });
    });
  }

  /** Starts radosgw and waits until it answers HTTP. */
  private async startRgw(deadline: number): Promise<void> {
    const rgw = this.launch('client.rgw', 'radosgw', ['-f', '-c', this.confFile, '-n', 'client.rgw']);
    for (;;) {
      const answered = await new Promise<boolean>((resolvePromise) => {
        const req = httpRequest({ host: '127.0.0.1', port: this.httpPort, path: '/', timeout: 2000 }, (res) => {
          res.resume();
          resolvePromise(true);
        });
        req.on('timeout', () => req.destroy());
        req.on('error', () => resolvePromise(false));
        req.end();
      });
      if (answered) return;
      if (rgw.child.exitCode !== null || rgw.child.signalCode !== null) {
        throw new Error(`radosgw exited (${rgw.child.exitCode ?? rgw.child.signalCode})${this.logTails()}`);
      }
      if (Date.now() > deadline) throw new Error(`radosgw did not answer on port ${this.httpPort}${this.logTails()}`);
      await sleep(50);
    }
  }

  /** Last lines of every daemon's log, for failure messages. */
  logTails(): string {
    let out = '';
    for (const name of ['mon.a', 'osd.0', 'client.rgw']) {
      for (const file of [`${name}.log`, `${name}.out`]) {
        try {
          const tail = readFileSync(join(this.dir, 'log', file), 'utf8')
            .trimEnd()
            .split('\n')
            .slice(-8)
            .join('\n');
          if (tail) out += `\n--- ${file}\n${tail}`;
        } catch {
          /* not started */
        }
      }
    }
    return out;
  }

  /** Kills radosgw with SIGKILL (monitor and OSD keep the data), as a crash in the middle of a request would. */
  async kill(): Promise<void> {
    const rgw = this.daemons.get('client.rgw');
    if (!rgw) return;
    rgw.child.kill('SIGKILL');
    await rgw.exited;
    this.daemons.delete('client.rgw');
  }

  /** Starts radosgw again (after {@link kill}, or killing it first) on the same ports, users and data. */
  async restart(): Promise<void> {
    await this.kill();
    const t0 = Date.now();
    await this.startRgw(Date.now() + (this.opts.timeoutMs ?? 90_000));
    this.timings.restart = Date.now() - t0;
  }

  /**
   * Creates a bucket owned by the S3 user with one SigV4-signed `PUT /NAME` over HTTP (radosgw-admin 16.2 cannot
   * create buckets, and this keeps the harness free of an S3 client).
   */
  async createBucket(name: string): Promise<void> {
    const now = new Date().toISOString().replace(/[-:]|\.\d{3}/g, ''); // 20261201T120000Z
    const day = now.slice(0, 8);
    const host = `127.0.0.1:${this.httpPort}`;
    const payload = sha256('');
    const path = `/${encodeURIComponent(name)}`;
    const signed = 'host;x-amz-content-sha256;x-amz-date';
    const canonicalHeaders = [`host:${host}`, `x-amz-content-sha256:${payload}`, `x-amz-date:${now}`];
    const canonical = ['PUT', path, '', ...canonicalHeaders, '', signed, payload];
    const scope = `${day}/${this.region}/s3/aws4_request`;
    const toSign = ['AWS4-HMAC-SHA256', now, scope, sha256(canonical.join('\n'))].join('\n');
    let key: Buffer = hmac(`AWS4${this.secretKey}`, day);
    for (const part of [this.region, 's3', 'aws4_request']) key = hmac(key, part);
    const signature = createHmac('sha256', key).update(toSign).digest('hex');
    const headers = {
      host,
      'x-amz-content-sha256': payload,
      'x-amz-date': now,
      authorization: `AWS4-HMAC-SHA256 Credential=${this.accessKey}/${scope}, SignedHeaders=${signed}, Signature=${signature}`,
    };
    const { status, body } = await new Promise<{ status: number; body: string }>((resolvePromise, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port: this.httpPort, method: 'PUT', path, headers }, (res) => {
        let text = '';
        res.on('data', (d: Buffer) => (text += d.toString()));
        res.on('end', () => resolvePromise({ status: res.statusCode ?? 0, body: text }));
      });
      req.on('error', reject);
      req.end();
    });
    if (status !== 200) throw new Error(`creating bucket ${name}: HTTP ${status} ${body}`);
  }

  /**
   * The bucket's index as radosgw-admin sees it, independently of any S3 client: name and size of each entry
   * (`bucket list` also shows the parts of unfinished multipart uploads, under `_multipart_` names).
   */
  async bucketEntries(name: string): Promise<{ name: string; size: number }[]> {
    const json = await this.admin(['bucket', 'list', `--bucket=${name}`]);
    const entries = JSON.parse(json) as { name: string; meta?: { size?: number } }[];
    return entries.map((e) => ({ name: e.name, size: e.meta?.size ?? 0 }));
  }

  /** Removes a bucket and everything in it with radosgw-admin (whatever state S3 clients left it in). */
  async removeBucket(name: string): Promise<void> {
    await this.admin(['bucket', 'rm', `--bucket=${name}`, '--purge-objects']);
  }

  /**
   * Runs radosgw-admin, up to three times: radosgw-admin 16.2 sometimes crashes on its way out (a segfault in
   * `RGWWatcher::reinit` when its watch connection drops, seen in CI under load) after printing a complete answer,
   * and once in a while before. Read-only commands and `bucket rm` are safe to repeat.
   */
  private async admin(args: string[]): Promise<string> {
    const deadline = Date.now() + 90_000;
    let last: unknown;
    for (let attempt = 1; attempt <= 3 && Date.now() < deadline; attempt++) {
      try {
        return await this.tool(deadline, 'radosgw-admin', ['-c', this.confFile, ...args]);
      } catch (err) {
        last = err;
        await sleep(500);
      }
    }
    throw last;
  }

  /** Kills every process the harness started and removes its directory (idempotent). */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    // SIGKILL, not a clean shutdown: nothing is kept, and memstore would spend time writing its RAM to disk.
    const tools = [...this.tools].map(
      (child) => new Promise((r) => ((child.exitCode ?? child.signalCode) !== null ? r(null) : child.once('exit', r))),
    );
    for (const child of this.tools) child.kill('SIGKILL');
    for (const d of this.daemons.values()) d.child.kill('SIGKILL');
    await Promise.all([...tools, ...[...this.daemons.values()].map((d) => d.exited)]);
    this.daemons.clear();
    rmSync(this.dir, { recursive: true, force: true });
    live.delete(this);
  }

  /** Synchronous last resort at process exit: SIGKILL everything, remove the directory. */
  killSync(): void {
    for (const child of [...this.tools, ...[...this.daemons.values()].map((d) => d.child)]) {
      try {
        child.kill('SIGKILL');
      } catch {
        /* gone */
      }
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
