import { BartError } from '../util/errors.js';
import { quoteForPostgresCommand } from '../util/shell-quote.js';
import type { FreeSpace, PathState, RestoreTarget, RestoreTargetSpec, TargetFileWriter } from './restore-target.js';
import type { SshChannel } from './ssh-channel.js';
import { remoteWord, SshSession, type SshDestination } from './ssh-session.js';
import { TarUpload } from './ssh-tar-upload.js';

/** Spec of an ssh target: worker threads attach to the main thread's master connection. */
export type SshRestoreTargetSpec = Extract<RestoreTargetSpec, { kind: 'ssh' }>;

function octalMode(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, '0');
}

/** Parses `user@host` from -r/--remote-host. */
export function parseRemoteDestination(text: string): SshDestination {
  const m = /^([^@\s]+)@([^@\s]+)$/.exec(text.trim());
  if (!m) throw new BartError(`-r/--remote-host "${text}" is invalid: expected user@host`);
  return { user: m[1]!, host: m[2]! };
}

/**
 * restore_command for a cluster restored on another host: fetch each WAL file from the BART host's
 * archive with scp (BatchMode, as BART wrote it), falling back to the gzip-compressed copy that
 * MANAGE leaves when wal_compression is enabled.
 */
export function scpRestoreCommand(bartHost: string, archivePath: string): string {
  const src = (suffix: string) => quoteForPostgresCommand(`${bartHost}:${archivePath}/`) + '%f' + suffix;
  return `scp -q -o BatchMode=yes ${src('')} %p 2>/dev/null || { scp -q -o BatchMode=yes ${src('.gz')} %p.gz && gunzip -f %p.gz; }`;
}

/**
 * Restores onto another host over ssh as `user@host`: the files arrive as tar streams (one ssh
 * session per restore task, extracted by the remote `tar`, so they belong to that user), and the
 * few other operations (checks, mkdir, config files, renames, sync) are shell commands on one
 * long-lived channel. Nothing but sh and standard tools is needed there.
 */
export class SshRestoreTarget implements RestoreTarget {
  readonly description: string;
  readonly spec: RestoreTargetSpec;
  private channel: SshChannel | undefined;
  private upload: TarUpload | undefined;
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(private readonly session: SshSession, private readonly owner: boolean) {
    this.description = session.destination;
    this.spec = { kind: 'ssh', user: session.target.user, host: session.target.host, controlPath: session.controlPath };
  }

  /** Connects (once; workers reuse the connection); throws a BartError with the fix when ssh fails. */
  static async connect(target: SshDestination): Promise<SshRestoreTarget> {
    return new SshRestoreTarget(await SshSession.open(target), true);
  }

  /** Rebuilds a target in a worker thread from its spec. */
  static fromSpec(spec: SshRestoreTargetSpec): SshRestoreTarget {
    return new SshRestoreTarget(SshSession.attach({ user: spec.user, host: spec.host }, spec.controlPath), false);
  }

  /** Runs a command on the channel (one at a time); returns stdout, or throws with `what` and stderr. */
  private run(command: string, what: string, okCodes: number[] = [0]): Promise<{ code: number; stdout: string }> {
    const next = this.queue.then(async () => {
      this.channel ??= await this.session.channel();
      const r = await this.channel.run(command);
      if (!okCodes.includes(r.code)) {
        throw new BartError(`${what} on ${this.description} failed: ${r.stderr.trim().split('\n').pop() || `exit status ${r.code}`}`);
      }
      return { code: r.code, stdout: r.stdout.toString() };
    });
    this.queue = next.catch(() => undefined);
    return next;
  }

  async inspect(path: string): Promise<PathState> {
    const p = remoteWord(path);
    const out = (
      await this.run(
        `if [ -d ${p} ]; then echo dir; stat -c %a ${p} 2>/dev/null || echo 700; ls -A ${p} | LC_ALL=C sort | head -n 1; ` +
          `elif [ -e ${p} ] || [ -L ${p} ]; then echo other; else echo absent; d=$(dirname ${p}); while [ ! -d "$d" ]; do d=$(dirname "$d"); done; echo "$d"; fi`,
        `checking "${path}"`,
      )
    ).stdout.split('\n');
    if (out[0] === 'other') return { kind: 'not-directory' };
    if (out[0] === 'absent') return { kind: 'absent', existingParent: out[1] ?? '/' };
    const sample = out[2] ?? '';
    if (sample === '') return { kind: 'empty', mode: parseInt(out[1] ?? '700', 8) };
    return { kind: 'not-empty', sample };
  }

  async writable(dir: string): Promise<boolean> {
    const r = await this.run(`[ -w ${remoteWord(dir)} ] && [ -x ${remoteWord(dir)} ]`, `checking "${dir}"`, [0, 1]);
    return r.code === 0;
  }

  async freeSpace(path: string): Promise<FreeSpace> {
    const p = remoteWord(path);
    const out = (await this.run(`d=${p}; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; echo "$d"; df -Pk "$d" | tail -n 1`, `measuring free space for "${path}"`)).stdout.split('\n');
    const f = (out[1] ?? '').trim().split(/\s+/);
    const avail = Number(f[3]);
    if (!Number.isFinite(avail)) throw new BartError(`cannot read the free space of "${path}" on ${this.description} (df printed "${out[1] ?? ''}")`);
    return { measuredAt: out[0] ?? path, device: `${f[0]} ${f[5] ?? ''}`, freeBytes: avail * 1024 };
  }

  async makeDir(path: string, mode: number): Promise<void> {
    await this.run(`mkdir -p ${remoteWord(path)} && chmod ${octalMode(mode)} ${remoteWord(path)}`, `creating directory "${path}"`);
  }

  async chmod(path: string, mode: number): Promise<void> {
    await this.run(`chmod ${octalMode(mode)} ${remoteWord(path)}`, `chmod of "${path}"`);
  }

  async writeFile(path: string, data: string, mode: number): Promise<void> {
    await this.flushUploads();
    // Content goes over stdin of its own session: binary-safe, and the line channel stays simple.
    const p = remoteWord(path);
    await this.session.execOk(`umask 077 && cat > ${p} && chmod ${octalMode(mode)} ${p}`, `writing "${path}"`, data);
  }

  async readFile(path: string): Promise<string | undefined> {
    const r = await this.run(`[ -e ${remoteWord(path)} ] || exit 3; cat ${remoteWord(path)}`, `reading "${path}"`, [0, 3]);
    return r.code === 3 ? undefined : r.stdout;
  }

  async openWriter(path: string, mode: number, size?: number): Promise<TargetFileWriter> {
    if (size === undefined) throw new BartError(`internal error: writing "${path}" over ssh needs its size in advance`);
    this.upload ??= new TarUpload(this.session);
    return this.upload.open(path, mode, size);
  }

  /** Ends the current tar stream, so everything written so far is on the remote disk. */
  async flushUploads(): Promise<void> {
    const u = this.upload;
    this.upload = undefined;
    await u?.finish();
  }

  async symlink(linkTarget: string, path: string): Promise<void> {
    await this.run(`ln -s ${remoteWord(linkTarget)} ${remoteWord(path)}`, `creating symlink "${path}"`);
  }

  async rename(from: string, to: string): Promise<void> {
    await this.flushUploads();
    await this.run(`mv -f ${remoteWord(from)} ${remoteWord(to)}`, `renaming "${from}"`);
  }

  async remove(path: string): Promise<void> {
    await this.run(`rm -rf ${remoteWord(path)}`, `removing "${path}"`);
  }

  async emptyDir(path: string): Promise<void> {
    await this.run(`[ ! -d ${remoteWord(path)} ] || find ${remoteWord(path)} -mindepth 1 -maxdepth 1 -exec rm -rf {} +`, `emptying "${path}"`);
  }

  async chownTree(path: string, uid: number, gid: number): Promise<void> {
    await this.run(`chown -R ${uid}:${gid} ${remoteWord(path)}`, `chown of "${path}"`);
  }

  async syncDir(path: string): Promise<void> {
    await this.syncTree(path);
  }

  async syncTree(path: string): Promise<void> {
    await this.flushUploads();
    // coreutils `sync -f` is syncfs(2) of that file system; a plain `sync` elsewhere.
    await this.run(`sync -f ${remoteWord(path)} 2>/dev/null || sync`, `syncing "${path}"`);
  }

  /** Ends the upload stream (reporting remote failures), the channel and, in the main thread, the connection. */
  async close(): Promise<void> {
    try {
      await this.flushUploads();
    } finally {
      this.channel?.close();
      this.channel = undefined;
      if (this.owner) await this.session.close();
    }
  }
}
