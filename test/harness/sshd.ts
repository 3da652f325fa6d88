// Test harness: a private OpenSSH server with key-only logins for remote tests.

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import {
  appendFileSync,
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  writeFileSync,
} from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './cluster.js';
import { removeTree } from './os.js';

/** The OS user that runs bart in remote tests (≠ cluster_owner `postgres`); created when missing. */
export const BART_TEST_USER = 'pgbartbu';

/** An OS user's identity as the tests need it. */
export interface SshUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
  /** Private key file (in the sshd's temp dir, owned by the user, 0600). */
  keyFile: string;
  publicKey: string;
}

function getent(name: string): { uid: number; gid: number; home: string } | undefined {
  try {
    const f = execFileSync('getent', ['passwd', name], { encoding: 'utf8' }).trim().split(':');
    return { uid: Number(f[2]), gid: Number(f[3]), home: f[5]! };
  } catch {
    return undefined;
  }
}

/** Creates the BART test user if missing and lets both users log in with keys (sshd refuses locked accounts). */
function ensureUser(name: string): { uid: number; gid: number; home: string } {
  if (!getent(name)) execFileSync('useradd', ['-m', '-s', '/bin/bash', name]);
  // `!` in /etc/shadow locks the account, which sshd refuses even for keys; `*` allows keys only.
  const shadow = execFileSync('getent', ['shadow', name], { encoding: 'utf8' }).split(':')[1] ?? '';
  if (shadow.startsWith('!')) execFileSync('usermod', ['-p', '*', name]);
  const u = getent(name)!;
  if (!existsSync(u.home)) {
    mkdirSync(u.home, { recursive: true, mode: 0o755 });
    chownSync(u.home, u.uid, u.gid);
  }
  return u;
}

/** Lists a process's descendants by reading /proc (so we signal exactly the processes our sshd started). */
function descendants(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(d));
      children.set(ppid, list);
    } catch {
      /* gone */
    }
  }
  const out: number[] = [];
  const walk = (p: number) => {
    for (const c of children.get(p) ?? []) {
      out.push(c);
      walk(c);
    }
  };
  walk(pid);
  return out;
}

/**
 * A private OpenSSH server on 127.0.0.1 and a free port with key-only logins for `postgres` (the
 * cluster owner) and {@link BART_TEST_USER}; each user gets a key pair, a known_hosts file holding
 * the server's key, and an alias in ~/.ssh/config (removed again by {@link stop}).
 */
export class TestSshd {
  /** Host alias both users' ~/.ssh/config resolve to 127.0.0.1:port. */
  readonly alias: string;
  private child: ChildProcess | undefined;
  private readonly configs: string[] = [];

  private constructor(
    readonly dir: string,
    readonly port: number,
    readonly users: Map<string, SshUser>,
  ) {
    this.alias = `pgbart-sshd-${port}`;
  }

  /**
   * Sets up keys, users and config, and starts sshd. `opts.setEnv` gives a user's sessions extra
   * environment variables (sshd's `SetEnv` in a `Match User` block), e.g. a PATH that puts a crafted
   * `find` first: how the hostile-host test makes the cluster owner's account lie to the BART host.
   */
  static async start(
    userNames: string[] = ['postgres', BART_TEST_USER],
    opts: { setEnv?: Record<string, Record<string, string>> } = {},
  ): Promise<TestSshd> {
    const dir = mkdtempSync(join(tmpdir(), 'pgbart-sshd-'));
    chmodSync(dir, 0o755);
    const port = await freePort();
    const users = new Map<string, SshUser>();
    const sshd = new TestSshd(dir, port, users);
    try {
      mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
      execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'host_key')]);
      const hostPub = readFileSync(join(dir, 'host_key.pub'), 'utf8').trim().split(' ').slice(0, 2).join(' ');
      mkdirSync(join(dir, 'authorized'), { mode: 0o755 });
      mkdirSync(join(dir, 'tmp'));
      chmodSync(join(dir, 'tmp'), 0o1777);
      for (const name of userNames) {
        const u = ensureUser(name);
        const udir = join(dir, `user-${name}`);
        mkdirSync(udir, { mode: 0o700 });
        const keyFile = join(udir, 'id_ed25519');
        execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `${name}@pgbart-test`, '-f', keyFile]);
        writeFileSync(join(udir, 'known_hosts'), `${sshd.alias} ${hostPub}\n`);
        for (const f of ['', 'id_ed25519', 'id_ed25519.pub', 'known_hosts']) chownSync(join(udir, f), u.uid, u.gid);
        users.set(name, { name, ...u, keyFile, publicKey: readFileSync(keyFile + '.pub', 'utf8').trim() });
      }
      for (const u of users.values()) {
        writeFileSync(join(dir, 'authorized', u.name), '');
        sshd.addSshConfig(u);
      }
      writeFileSync(
        join(dir, 'sshd_config'),
        [
          `Port ${port}`,
          'ListenAddress 127.0.0.1',
          `HostKey ${join(dir, 'host_key')}`,
          `PidFile ${join(dir, 'sshd.pid')}`,
          `AuthorizedKeysFile ${join(dir, 'authorized')}/%u`,
          'PasswordAuthentication no',
          'KbdInteractiveAuthentication no',
          'UsePAM no',
          'StrictModes no',
          'PubkeyAuthentication yes',
          `AllowUsers ${userNames.join(' ')}`,
          'Subsystem sftp internal-sftp',
          'MaxStartups 100:30:200',
          'LogLevel VERBOSE',
          // Sessions' scratch files (the remote channel's mktemp -d) go under this harness: a test that kills the
          // host (kill()) leaves no scratch directory in the machine's /tmp, and stop() removes them.
          `SetEnv TMPDIR=${join(dir, 'tmp')}`,
          // Match blocks last: they run to the end of the file.
          ...Object.entries(opts.setEnv ?? {}).flatMap(([user, vars]) => [
            `Match User ${user}`,
            ...Object.entries(vars).map(([k, v]) => `  SetEnv ${k}=${v}`),
          ]),
          '',
        ].join('\n'),
      );
      await sshd.launch();
    } catch (err) {
      await sshd.stop();
      throw err;
    }
    return sshd;
  }

  /** Host block in the user's real ~/.ssh/config (ssh, scp and PostgreSQL's archive_command read it). */
  private addSshConfig(u: SshUser): void {
    const sshDir = join(u.home, '.ssh');
    if (!existsSync(sshDir)) {
      mkdirSync(sshDir, { mode: 0o700 });
      chownSync(sshDir, u.uid, u.gid);
    }
    const config = join(sshDir, 'config');
    const udir = join(this.dir, `user-${u.name}`);
    appendFileSync(
      config,
      [
        `# pgbart-test BEGIN ${this.alias}`,
        `Host ${this.alias}`,
        '  HostName 127.0.0.1',
        `  Port ${this.port}`,
        `  HostKeyAlias ${this.alias}`,
        `  IdentityFile ${u.keyFile}`,
        '  IdentitiesOnly yes',
        `  UserKnownHostsFile ${join(udir, 'known_hosts')}`,
        '  StrictHostKeyChecking yes',
        `# pgbart-test END ${this.alias}`,
        '',
      ].join('\n'),
    );
    chownSync(config, u.uid, u.gid);
    chmodSync(config, 0o600);
    this.configs.push(config);
  }

  private async launch(): Promise<void> {
    const child = spawn(
      '/usr/sbin/sshd',
      ['-D', '-f', join(this.dir, 'sshd_config'), '-E', join(this.dir, 'sshd.log')],
      { stdio: 'ignore' },
    );
    this.child = child;
    const exited = new Promise<never>((_, reject) =>
      child.once('exit', (c) => reject(new Error(`sshd exited (${c}): ${this.logTail()}`))),
    );
    exited.catch(() => undefined);
    // Ready when it accepts TCP connections.
    const deadline = Date.now() + 10_000;
    for (;;) {
      const ok = await new Promise<boolean>((r) => {
        const s = connect(this.port, '127.0.0.1');
        s.once('connect', () => {
          s.destroy();
          r(true);
        });
        s.once('error', () => r(false));
      });
      if (ok) return;
      if (child.exitCode !== null) await exited;
      if (Date.now() > deadline) throw new Error(`sshd did not start: ${this.logTail()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Lets `from`'s key log in as `to` (appends to the AuthorizedKeysFile of `to`). */
  authorize(from: string, to: string): void {
    appendFileSync(join(this.dir, 'authorized', to), this.users.get(from)!.publicKey + '\n');
  }

  /** Removes `from`'s key from the keys that may log in as `to`. */
  revoke(from: string, to: string): void {
    const file = join(this.dir, 'authorized', to);
    const key = this.users.get(from)!.publicKey;
    writeFileSync(
      file,
      readFileSync(file, 'utf8')
        .split('\n')
        .filter((l) => l.trim() !== key)
        .join('\n'),
    );
  }

  /** Path of `user`'s known_hosts file (to test an unknown host key). */
  knownHostsOf(user: string): string {
    return join(this.dir, `user-${user}`, 'known_hosts');
  }

  /** Kills sshd and every session it started (established connections drop, as when a host goes away). */
  kill(): void {
    const pid = this.child?.pid;
    if (pid === undefined || this.child?.exitCode !== null) return;
    for (const p of [pid, ...descendants(pid)]) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    this.child = undefined;
  }

  /** Starts sshd again (after {@link kill}). */
  async restart(): Promise<void> {
    this.kill();
    await new Promise((r) => setTimeout(r, 100));
    await this.launch();
  }

  /** Last lines of the sshd log, for failure messages. */
  logTail(): string {
    try {
      return readFileSync(join(this.dir, 'sshd.log'), 'utf8').split('\n').slice(-15).join('\n');
    } catch {
      return '';
    }
  }

  /** Stops sshd, removes the ~/.ssh/config blocks and the temp dir (users stay: harmless, reused). */
  async stop(): Promise<void> {
    this.kill();
    for (const config of this.configs) {
      try {
        const text = readFileSync(config, 'utf8');
        const re = new RegExp(`# pgbart-test BEGIN ${this.alias}\\n[\\s\\S]*?# pgbart-test END ${this.alias}\\n`, 'g');
        writeFileSync(config, text.replace(re, ''));
      } catch {
        /* gone */
      }
    }
    removeTree(this.dir);
  }
}
