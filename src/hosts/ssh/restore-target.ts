// Restore target (ssh driver): RESTORE writing to another host over ssh, with batched incremental patches.

import { BartError } from '../../util/errors.js';
import { createFileHash, type FileHashName } from '../../util/file-hash.js';
import { log } from '../../util/log.js';
import { quoteForPostgresCommand, shellQuote, singleQuote } from '../../util/shell-quote.js';
import { sshDestinationProblem } from '../../util/ssh-destination.js';
import type {
  FileToCompare,
  FreeSpace,
  PathState,
  RestoreTarget,
  RestoreTargetSpec,
  TargetEntry,
  TargetFilePatcher,
  TargetFileState,
  TargetFileWriter,
} from '../restore-target.js';
import { walkOrder } from './data-host.js';
import { SshChannel } from './channel.js';
import { remoteWord, SshSession, type SshDestination } from './session.js';
import { explainSshFailure } from './errors.js';
import { TarUpload } from './tar-upload.js';
import { BLOCK_SIZE } from '../../postgres/constants.js';

/** Spec of an ssh target: worker threads attach to the main thread's master connection. */
export type SshRestoreTargetSpec = Extract<RestoreTargetSpec, { kind: 'ssh' }>;

/**
 * Changed blocks uploaded but not yet applied, at the most: the scratch space an incremental
 * restore needs on the target beyond the restored cluster (see {@link SshRestoreTarget.openPatcher}).
 */
export const PATCH_BATCH_BYTES = 64 * 1024 * 1024;
/** Patched files per batch, at the most (bounds the script and the scratch files). */
const PATCH_BATCH_FILES = 1000;
/** Files per command of compareFiles: one round trip each, and the command line stays a few KB. */
const COMPARE_BATCH_FILES = 200;
/** Exit status of the patch script when a file to patch does not exist. */
const PATCH_MISSING = 3;

/** A byte range of a patched file, stored at `scratchAt` of its scratch file. */
interface Extent {
  at: number;
  scratchAt: number;
  length: number;
}

/** A patch uploaded and waiting to be applied. */
interface PendingPatch {
  path: string;
  /** Where its bytes wait; none when only the length changes (no changed block). */
  scratch?: string;
  length: number;
  extents: Extent[];
}

/**
 * The shell script that applies a batch of patches with POSIX dd reading the scratch files: each
 * file is checked to exist, cut or extended to its length (dd of nothing with seek= truncates
 * there) and its ranges copied in place (conv=notrunc); then the scratch files are removed.
 */
function patchScript(patches: PendingPatch[]): string {
  const lines = [
    'e=$(mktemp "${TMPDIR:-/tmp}/pgbart-dd.XXXXXX") || exit 1',
    'trap \'rm -f "$e"\' EXIT',
    // dd prints statistics on success: its output is shown only when it fails.
    'd() { dd "$@" 2>"$e" || { cat "$e" >&2; exit 1; }; }',
    `t() { [ -f "$1" ] || { printf '%s\\n' "$1" >&2; exit ${PATCH_MISSING}; }; d if=/dev/null of="$1" bs=1 seek="$2"; }`,
  ];
  const scratch: string[] = [];
  for (const p of patches) {
    const f = remoteWord(p.path);
    lines.push(`t ${f} ${p.length}`);
    if (p.scratch === undefined) continue;
    const from = remoteWord(p.scratch);
    scratch.push(from);
    for (const e of p.extents) {
      // Whole 8 KB blocks (always, for relation files) copy in block units; anything else byte-wise.
      const whole = e.at % BLOCK_SIZE === 0 && e.scratchAt % BLOCK_SIZE === 0 && e.length % BLOCK_SIZE === 0;
      const bs = whole ? BLOCK_SIZE : 1;
      lines.push(
        `d if=${from} of=${f} bs=${bs} skip=${e.scratchAt / bs} seek=${e.at / bs} count=${e.length / bs} conv=notrunc`,
      );
    }
  }
  // One rm for the batch (a fork per file would cost as much as the patching).
  if (scratch.length > 0) lines.push(`rm -f ${scratch.join(' ')}`);
  return lines.join('\n') + '\n';
}

function octalMode(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, '0');
}

/** Parses `user@host` from -r/--remote-host. */
export function parseRemoteDestination(text: string): SshDestination {
  const problem = sshDestinationProblem(text.trim());
  if (problem) throw new BartError(`-r/--remote-host ${JSON.stringify(text)} is invalid: ${problem}`);
  const m = /^([^@\s]+)@([^@\s]+)$/.exec(text.trim());
  if (!m) throw new BartError(`-r/--remote-host ${JSON.stringify(text)} is invalid: expected user@host`);
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

/** Stands for `%f` while the command is quoted (quoting doubles every `%`). */
const WAL_FILE_TOKEN = '@PGBART_WALFILE@';

/**
 * restore_command for a cluster restored on another host when the archive is not a directory on
 * the BART host (an S3 repository): `bart ARCHIVE-GET` runs there over ssh (BatchMode) into a
 * private temp directory, and the file comes back on ssh's stdout. ARCHIVE-GET's own output goes
 * to stderr, so only the file's bytes reach `%p`; any failure (not archived, ssh, bucket) exits
 * non-zero, which recovery takes as "not there". `bartCommand` is the command line that starts
 * bart on the BART host (node and bin/bart.js), `configPath` its bart.cfg.
 */
export function sshArchiveGetRestoreCommand(
  bartHost: string,
  bartCommand: string[],
  configPath: string,
  server: string,
): string {
  const words = [...bartCommand, '-c', configPath, 'ARCHIVE-GET', '-s', server].map(shellQuote).join(' ');
  const remote =
    `t=$(mktemp -d) || exit 1; ${words} ${WAL_FILE_TOKEN} "$t/f" >&2 && cat "$t/f"; ` + 'r=$?; rm -rf "$t"; exit $r';
  const command = `ssh -o BatchMode=yes ${shellQuote(bartHost)} ${singleQuote(remote)}`;
  // Written under a temp name and renamed: a transfer cut short never leaves a partial %p.
  return `${command.replace(/%/g, '%%').replace(WAL_FILE_TOKEN, '%f')} > %p.tmp && mv %p.tmp %p`;
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
  private pending: PendingPatch[] = [];
  private pendingBytes = 0;
  private readonly patchStats = { files: 0, extents: 0, bytes: 0, batches: 0, ms: 0 };

  private constructor(
    private readonly session: SshSession,
    private readonly owner: boolean,
  ) {
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

  /** Runs `use` on the channel (opened on first use) once every earlier use is done: one request at a time. */
  private onChannel<T>(use: (channel: SshChannel) => Promise<T>): Promise<T> {
    const next = this.queue.then(async () => use((this.channel ??= await SshChannel.open(this.session))));
    this.queue = next.catch(() => undefined);
    return next;
  }

  /** Runs a command on the channel (one at a time); returns stdout, or throws with `what` and stderr. */
  private run(command: string, what: string, okCodes: number[] = [0]): Promise<{ code: number; stdout: string }> {
    return this.onChannel(async (channel) => {
      const r = await channel.run(command);
      if (!okCodes.includes(r.code)) {
        throw new BartError(
          `${what} on ${this.description} failed: ${r.stderr.trim().split('\n').pop() || `exit status ${r.code}`}`,
        );
      }
      return { code: r.code, stdout: r.stdout.toString() };
    });
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
    const out = (
      await this.run(
        `d=${p}; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; echo "$d"; df -Pk "$d" | tail -n 1`,
        `measuring free space for "${path}"`,
      )
    ).stdout.split('\n');
    const f = (out[1] ?? '').trim().split(/\s+/);
    const avail = Number(f[3]);
    if (!Number.isFinite(avail))
      throw new BartError(
        `cannot read the free space of "${path}" on ${this.description} (df printed "${out[1] ?? ''}")`,
      );
    return { measuredAt: out[0] ?? path, device: `${f[0]} ${f[5] ?? ''}`, freeBytes: avail * 1024 };
  }

  async makeDir(path: string, mode: number): Promise<void> {
    await this.run(
      `mkdir -p ${remoteWord(path)} && chmod ${octalMode(mode)} ${remoteWord(path)}`,
      `creating directory "${path}"`,
    );
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
    // In a subshell: the channel evals each command in its loop, where `exit` would end the channel.
    const p = remoteWord(path);
    const r = await this.run(`([ -e ${p} ] || exit 3; cat ${p})`, `reading "${path}"`, [0, 3]);
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

  /**
   * Patches a file over ssh without a round trip per block: the changed bytes are uploaded on the
   * tar stream into a scratch file next to the file (inside the restore, so a failure leaves it
   * where the cleanup or the incomplete marker covers it), and {@link flush} applies a batch of
   * patches with one shell script of dd commands. At most {@link PATCH_BATCH_BYTES} wait at once.
   */
  async openPatcher(path: string, length: number, bytes: number): Promise<TargetFilePatcher> {
    // Most relation files of an incremental have no changed block (only their length is recorded).
    const scratch = bytes > 0 ? `${path}.pgbart-blocks` : undefined;
    const writer = scratch !== undefined ? await this.openWriter(scratch, 0o600, bytes) : undefined;
    const extents: Extent[] = [];
    let written = 0;
    return {
      write: async (data, position) => {
        if (!writer) throw new BartError(`internal error: "${path}" was opened for a patch of 0 bytes`);
        const last = extents[extents.length - 1];
        if (last && last.at + last.length === position) last.length += data.length;
        else extents.push({ at: position, scratchAt: written, length: data.length });
        written += data.length;
        await writer.write(data);
      },
      finish: async () => {
        await writer?.finish();
        this.pending.push({ path, ...(scratch !== undefined ? { scratch } : {}), length, extents });
        this.pendingBytes += bytes;
        if (this.pendingBytes >= PATCH_BATCH_BYTES || this.pending.length >= PATCH_BATCH_FILES) await this.flush();
      },
      abort: async () => writer?.abort(),
    };
  }

  /** Ends the upload stream, then applies the waiting patches (one ssh session for the whole batch). */
  async flush(): Promise<void> {
    await this.flushUploads();
    if (this.pending.length === 0) return;
    const batch = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    const started = Date.now();
    const r = await this.session.exec('exec sh -s', patchScript(batch));
    if (r.code === PATCH_MISSING) {
      const path = r.stderr.trim().split('\n').pop() ?? '?';
      throw new BartError(
        `"${path}" on ${this.description} is patched by an incremental backup, but the parent backups did not restore it (inconsistent chain)`,
      );
    }
    if (r.code !== 0) {
      const why =
        r.code === 255 || r.code === -1
          ? explainSshFailure(r.stderr, { destination: this.description })
          : r.stderr.trim().split('\n').pop() || `exit status ${r.code}`;
      throw new BartError(`patching ${batch.length} files on ${this.description} failed: ${why}`);
    }
    const st = this.patchStats;
    st.batches++;
    st.files += batch.length;
    for (const p of batch) {
      st.extents += p.extents.length;
      for (const e of p.extents) st.bytes += e.length;
    }
    st.ms += Date.now() - started;
  }

  async *walk(root: string): AsyncIterable<TargetEntry> {
    // POSIX find in a subshell (the channel's shell keeps its directory): the type letter and the path (relative, `./` stripped), NUL-separated.
    const r = await this.run(
      `[ ! -d ${remoteWord(root)} ] || (cd ${remoteWord(root)} && find . ! -name . \\( -type d -exec printf 'd %s\\0' {} + -o -type l -exec printf 'l %s\\0' {} + -o -type f -exec printf 'f %s\\0' {} + \\))`,
      `listing "${root}"`,
    );
    const entries: TargetEntry[] = [];
    for (const item of r.stdout.split('\0')) {
      const m = /^([dlf]) \.\/(.+)$/s.exec(item);
      if (!m) continue;
      entries.push({ path: m[2]!, type: m[1] === 'd' ? 'dir' : m[1] === 'l' ? 'symlink' : 'file' });
    }
    yield* entries.sort((a, b) => walkOrder(a.path, b.path));
  }

  /**
   * Two commands per batch of files: `stat` (size, mode and type of each, NUL-separated), then
   * `sha256sum`/`md5sum -z` of the regular files whose size is the expected one: the content is
   * read on the target host and only the digests travel. A POSIX host has no CRC-32C tool: for crc32c
   * the files are streamed back over the channel and checksummed here (their bytes travel, once).
   */
  async compareFiles(
    root: string,
    files: FileToCompare[],
    hash: FileHashName | 'none',
  ): Promise<Map<string, TargetFileState>> {
    const out = new Map<string, TargetFileState>();
    const r = remoteWord(root);
    // Each command runs in a subshell: the channel evals commands in its loop, where `cd` would stay
    // and `exit` would end the channel.
    for (let i = 0; i < files.length; i += COMPARE_BATCH_FILES) {
      const batch = files.slice(i, i + COMPARE_BATCH_FILES);
      const words = batch.map((f) => remoteWord(f.path)).join(' ');
      // stat fails (exit 1) for the absent ones and still prints the others.
      const st = await this.run(
        `(cd ${r} && LC_ALL=C stat --printf '%s %a %F\\t%n\\0' -- ${words} 2>/dev/null; exit 0)`,
        `comparing files in "${root}"`,
      );
      const expected = new Map(batch.map((f) => [f.path, f.size]));
      const toHash: string[] = [];
      for (const item of st.stdout.split('\0')) {
        const m = /^(\d+) ([0-7]+) ([^\t]*)\t(.+)$/s.exec(item);
        if (!m || !m[3]!.startsWith('regular')) continue;
        const size = Number(m[1]);
        out.set(m[4]!, { size, mode: parseInt(m[2]!, 8) });
        if (hash !== 'none' && expected.get(m[4]!) === size) toHash.push(m[4]!);
      }
      if (toHash.length === 0) continue;
      if (hash === 'crc32c') {
        for (const path of toHash) {
          const digest = await this.digestHere(`${root.replace(/\/+$/, '')}/${path}`, hash);
          const state = out.get(path);
          if (state && digest !== undefined) state.digest = digest;
        }
        continue;
      }
      const sums = await this.run(
        `(cd ${r} && ${hash}sum -z -- ${toHash.map((p) => remoteWord(p)).join(' ')})`,
        `computing ${hash} checksums in "${root}"`,
        [0, 1],
      );
      for (const item of sums.stdout.split('\0')) {
        const m = /^([0-9a-f]+) [ *](.+)$/s.exec(item);
        const state = m ? out.get(m[2]!) : undefined;
        if (state) state.digest = m![1]!;
      }
    }
    return out;
  }

  /** Streams a remote file over the channel and checksums it here; undefined when it is gone. */
  private digestHere(path: string, hash: FileHashName): Promise<string | undefined> {
    return this.onChannel(async (channel) => {
      const file = await channel.readFile(path);
      if (!file) return undefined;
      const h = createFileHash(hash);
      const buffer = Buffer.allocUnsafe(1024 * 1024);
      try {
        for (let n; (n = await file.stream.read(buffer, 0, buffer.length)) > 0;) h.update(buffer.subarray(0, n));
      } catch (err) {
        // The channel is mid-file: not usable for the next command; the next one opens a new channel.
        channel.close();
        this.channel = undefined;
        throw err;
      }
      return h.digest('hex');
    });
  }

  async readHead(path: string, length: number): Promise<Buffer | undefined> {
    const p = remoteWord(path);
    const r = await this.run(
      `({ [ -f ${p} ] && [ ! -L ${p} ]; } || exit 3; head -c ${length} ${p} | od -An -v -tx1)`,
      `reading "${path}"`,
      [0, 3],
    );
    if (r.code === 3) return undefined;
    return Buffer.from(r.stdout.replace(/\s+/g, ''), 'hex');
  }

  async processAlive(pid: number): Promise<boolean> {
    // /proc where there is one; else kill -0, whose EPERM (another user's process) also means alive.
    const r = await this.run(
      `([ -d /proc/${pid} ] && exit 0; o=$(LC_ALL=C kill -0 ${pid} 2>&1) && exit 0; ` +
        `case "$o" in *[Nn]'o such process'*) exit 1;; esac; exit 0)`,
      `checking process ${pid}`,
      [0, 1],
    );
    return r.code === 0;
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
    await this.run(
      `[ ! -d ${remoteWord(path)} ] || find ${remoteWord(path)} -mindepth 1 -maxdepth 1 -exec rm -rf {} +`,
      `emptying "${path}"`,
    );
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
    const st = this.patchStats;
    if (st.batches > 0)
      log.debug(
        `ssh ${this.description}: patched ${st.files} files (${st.extents} dd ranges, ${st.bytes} bytes) in ${st.batches} batches, ${st.ms} ms applying`,
      );
    try {
      await this.flushUploads();
    } finally {
      this.channel?.close();
      this.channel = undefined;
      if (this.owner) await this.session.close();
    }
  }
}
