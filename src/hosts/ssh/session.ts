// SSH session: one multiplexed ssh master connection to a host, its one-shot commands and spawned processes.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BartError, errorMessage } from '../../util/errors.js';
import { log } from '../../util/log.js';
import { shellQuote } from '../../util/shell-quote.js';
import { explainSshFailure } from './errors.js';

/** What a one-shot remote command returned. */
export interface SshExecResult {
  /** Exit status of the remote command; 255 (or -1 when ssh could not start) means ssh itself failed. */
  code: number;
  stdout: Buffer;
  stderr: string;
}

/** `user@host` as ssh takes it. */
export interface SshDestination {
  user: string;
  host: string;
}

/**
 * Options every ssh we start gets: never prompt (BatchMode: keys, agents and known_hosts only, as
 * BART required), give up on dead peers within ~15 s instead of hanging a backup forever.
 */
export const SSH_BASE_OPTIONS = [
  '-o',
  'BatchMode=yes',
  '-o',
  'ConnectTimeout=10',
  '-o',
  'ServerAliveInterval=5',
  '-o',
  'ServerAliveCountMax=3',
];

/**
 * argv (after `ssh`) of a one-shot ssh that runs `words` (joined by ssh into one remote command line)
 * on its own connection, without a master: for checks that must see ssh itself log in.
 */
export function oneShotSshArgs(destination: string, words: string[]): string[] {
  return [...SSH_BASE_OPTIONS, '--', destination, ...words];
}

/** argv (after `scp`) that copies `remotePath` of `destination` to `localPath`, quietly, with the same options. */
export function scpFetchArgs(destination: string, remotePath: string, localPath: string): string[] {
  return [...SSH_BASE_OPTIONS, '-q', '--', `${destination}:${remotePath}`, localPath];
}

/** How long the background master may outlive us when bart is killed (it exits once idle this long). */
const MASTER_IDLE_SECONDS = 15;

/**
 * One authenticated OpenSSH connection to `user@host`, shared by everything pgbart runs there: a
 * ControlMaster started once in a private directory, then every command and long-lived channel is a
 * multiplexed session over it (no new TCP connection or authentication per file). The user's keys,
 * agent, ~/.ssh/config and known_hosts apply as with any ssh. Long-lived remote shells over it are
 * opened with SshChannel.open(session) (channel.ts builds on this file, not the other way round).
 */
export class SshSession {
  readonly destination: string;
  private closed = false;

  private constructor(
    readonly target: SshDestination,
    private readonly dir: string,
    readonly controlPath: string,
  ) {
    this.destination = `${target.user}@${target.host}`;
  }

  /** Connects (authenticating once); throws a BartError saying what to fix when ssh cannot log in. */
  static async open(target: SshDestination): Promise<SshSession> {
    const dir = mkdtempSync(join(tmpdir(), 'pgbart-ssh-'));
    const controlPath = join(dir, 'cm');
    const session = new SshSession(target, dir, controlPath);
    try {
      await session.startMaster();
    } catch (err) {
      rmSync(dir, { recursive: true, force: true });
      throw err;
    }
    return session;
  }

  /** Rebuilds a session object around an existing master (worker threads share the main thread's). */
  static attach(target: SshDestination, controlPath: string): SshSession {
    return new SshSession(target, '', controlPath);
  }

  private async startMaster(): Promise<void> {
    // -f: ssh returns once authenticated and keeps the master in the background; ControlPersist makes
    // that master exit by itself when idle, so a killed bart leaves nothing behind for long.
    const args = [
      ...SSH_BASE_OPTIONS,
      '-o',
      'ControlMaster=yes',
      '-o',
      `ControlPersist=${MASTER_IDLE_SECONDS}`,
      '-S',
      this.controlPath,
      '-f',
      '-N',
      '--',
      this.destination,
    ];
    const { code, stderr } = await new Promise<{ code: number; stderr: string }>((resolvePromise) => {
      let err = '';
      let child: ChildProcess;
      try {
        child = spawn('ssh', args, { stdio: ['ignore', 'ignore', 'pipe'] });
      } catch (e) {
        resolvePromise({ code: -1, stderr: errorMessage(e) });
        return;
      }
      child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      child.on('error', (e) => resolvePromise({ code: -1, stderr: `${errorMessage(e)} (spawn ssh)` }));
      // 'exit', not 'close': the backgrounded master inherits our stderr pipe and keeps it open.
      child.on('exit', (c) => {
        setTimeout(() => {
          child.stderr!.destroy();
          resolvePromise({ code: c ?? -1, stderr: err });
        }, 20);
      });
    });
    if (code !== 0 || !existsSync(this.controlPath)) {
      throw new BartError(
        explainSshFailure(stderr || `ssh exited with status ${code}`, { destination: this.destination }),
      );
    }
    log.debug(`ssh: connected to ${this.destination} (control socket ${this.controlPath})`);
  }

  /** ssh arguments that reuse the master for a new session; `--` keeps the destination from being read as an option. */
  sessionArgs(): string[] {
    return [...SSH_BASE_OPTIONS, '-o', 'ControlMaster=no', '-S', this.controlPath, '--', this.destination];
  }

  /** Starts `command` (a shell command line for the remote login shell) as a multiplexed session. */
  spawn(command: string): ChildProcess {
    if (this.closed) throw new BartError(`the ssh connection to ${this.destination} is closed`);
    return spawn('ssh', [...this.sessionArgs(), command], { stdio: ['pipe', 'pipe', 'pipe'] });
  }

  /** Runs one command to completion, collecting its output (small outputs only). */
  exec(command: string, input?: Buffer | string): Promise<SshExecResult> {
    return new Promise((resolvePromise) => {
      const child = this.spawn(command);
      const out: Buffer[] = [];
      let err = '';
      child.stdout!.on('data', (d: Buffer) => out.push(d));
      child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      child.on('error', (e) =>
        resolvePromise({ code: -1, stdout: Buffer.alloc(0), stderr: `${errorMessage(e)} (spawn ssh)` }),
      );
      child.on('close', (c) => resolvePromise({ code: c ?? 255, stdout: Buffer.concat(out), stderr: err }));
      child.stdin!.on('error', () => undefined);
      child.stdin!.end(input ?? '');
    });
  }

  /** Like {@link exec}, but a failing command (or ssh) becomes a BartError naming `what`. */
  async execOk(command: string, what: string, input?: Buffer | string): Promise<Buffer> {
    const r = await this.exec(command, input);
    if (r.code === 255 || r.code === -1)
      throw new BartError(`${what}: ${explainSshFailure(r.stderr, { destination: this.destination })}`);
    if (r.code !== 0)
      throw new BartError(
        `${what} on ${this.destination} failed: ${r.stderr.trim().split('\n').pop() ?? `exit ${r.code}`}`,
      );
    return r.stdout;
  }

  /** Stops the master connection (sessions still running end with it) and removes the control directory. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.dir === '') return; // attached: the owner stops the master
    await new Promise<void>((resolvePromise) => {
      const child = spawn('ssh', ['-S', this.controlPath, '-O', 'exit', '--', this.destination], { stdio: 'ignore' });
      child.on('error', () => resolvePromise());
      child.on('close', () => resolvePromise());
    });
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Quotes a remote path for the remote shell; refuses newlines, which would break the line protocol. */
export function remoteWord(path: string): string {
  if (path.includes('\n'))
    throw new BartError(`path "${path.replace(/\n/g, '\\n')}" contains a newline, which pgbart cannot handle over ssh`);
  return shellQuote(path);
}
