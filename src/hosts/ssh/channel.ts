// SSH channel: a POSIX sh loop on the remote host serving file reads and commands over one ssh channel.

import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { BartError, errorMessage } from '../../util/errors.js';
import { shellQuote } from '../../util/shell-quote.js';
import { isZeroBlock, parseTarHeader, TAR_BLOCK, TarExtensions, type TarHeader } from '../../storage/tar-header.js';
import { explainSshFailure } from './errors.js';
import type { SshSession } from './session.js';
import { BLOCK_SIZE } from '../../postgres/constants.js';

/** tar's record size with `-b 20`: an archive's length is a multiple of it. */
const TAR_RECORD = 10240;
const BLOCK = TAR_BLOCK;

/**
 * The remote half of a channel: a POSIX sh loop (nothing else needed on the database host) that
 * reads one request per line, and forks as little as possible per request (a fork and exec cost
 * ~2 ms, which per file would dominate a backup of many small files).
 * - `R rd PATH`: `V` when it does not exist, else `T` and `tar -c` of that one file (tar frames it exactly, pads a file that shrank
 *   while read with zeros, as the engine does for a relation truncated under it), then `K`, or `F`,
 *   tar's error output and the boundary line.
 * - anything else: a shell command; its stdout, a line `BOUNDARY STATUS`, and when the status is not
 *   0 its stderr followed by the boundary line. The boundary is random per channel.
 * Output of the user's shell startup files before `pgbart-ready` is skipped.
 */
function remoteScript(boundary: string): string {
  return [
    `B=${boundary}`,
    't=$(mktemp -d "${TMPDIR:-/tmp}/pgbart.XXXXXX") || exit 1',
    'trap \'rm -rf "$t"\' EXIT',
    // A dropped connection (SIGHUP) or a kill must not leave the scratch directory behind.
    "trap 'exit 1' HUP INT TERM PIPE",
    // An absolute member name (tar strips the `/`, saying so on stderr) rather than -C DIR: tar
    // then always writes a well-formed archive, even for a file that vanished or cannot be read.
    'rd() { if [ ! -e "$1" ]; then printf V; return; fi; printf T; tar -cf - -b 20 -- "$1" 2>"$t/e"; if [ $? -le 1 ]; then printf K; else printf F; cat "$t/e"; printf \'\\n%s\\n\' "$B"; fi; }',
    // rdm PATH...: one tar of many (small) files: one fork for all of them.
    'rdm() { printf T; tar -cf - -b 20 -- "$@" 2>"$t/e"; if [ $? -le 1 ]; then printf K; else printf F; cat "$t/e"; printf \'\\n%s\\n\' "$B"; fi; }',
    // rg PATH BLOCK COUNT: COUNT blocks (BLOCK_SIZE) from BLOCK on (incremental backups), zero-padded past the end.
    'rg() { if [ -e "$1" ] && [ ! -r "$1" ]; then printf E; return; fi; printf T; ' +
      `{ dd if="$1" bs=${BLOCK_SIZE} skip="$2" count="$3" 2>/dev/null; head -c $(($3 * ${BLOCK_SIZE})) /dev/zero; } ` +
      `| head -c $(($3 * ${BLOCK_SIZE})); }`,
    // rb PATH OFFSET LENGTH: the same for unaligned ranges (slower, never used by the engines today).
    'rb() { if [ -e "$1" ] && [ ! -r "$1" ]; then printf E; return; fi; printf T; { tail -c +$(($2 + 1)) -- "$1" 2>/dev/null | head -c "$3"; head -c "$3" /dev/zero; } | head -c "$3"; }',
    "command -v tar >/dev/null 2>&1 || { echo 'pgbart: tar is not installed on this host' >&2; exit 1; }",
    "printf 'pgbart-ready\\n'",
    'while IFS= read -r l; do',
    '  case $l in',
    '  "R "*) eval "${l#R }" </dev/null ;;',
    '  *) eval "$l" </dev/null 2>"$t/e"; r=$?; printf \'\\n%s %s\\n\' "$B" "$r"; [ "$r" -eq 0 ] || { cat "$t/e"; printf \'\\n%s\\n\' "$B"; } ;;',
    '  esac',
    'done',
  ].join('\n');
}

const READY = Buffer.from('pgbart-ready\n');
/** Incoming bytes buffered before ssh's output is paused (bounds memory per channel). */
const HIGH_WATER = 4 * 1024 * 1024;
/** Unread bytes of a streamed file that are skipped to reuse the channel; beyond, it is closed. */
const MAX_DRAIN = 8 * 1024 * 1024;

/** Result of a shell command run on a channel. */
export interface ChannelResult {
  code: number;
  stdout: Buffer;
  stderr: string;
}

/** A remote file being streamed on a channel; read it front to back. */
export interface ChannelFileStream {
  /** Copies up to `length` next bytes into `buffer`; 0 at the end. */
  read(buffer: Buffer, offset: number, length: number): Promise<number>;
  /** Skips what was not read, leaving the channel ready for the next request. */
  finish(): Promise<void>;
}

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/**
 * One long-lived `sh` on the remote host, multiplexed over the session's master connection.
 * Requests are strictly one at a time (callers hold the channel while they use it).
 */
export class SshChannel {
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private wake: (() => void) | undefined;
  private ended = false;
  private stderrTail = '';
  private paused = false;
  private readonly boundary: string;
  /** Set when the framing can no longer be trusted; the channel is then unusable. */
  broken = false;

  private constructor(
    private readonly session: SshSession,
    boundary: string,
    private readonly child: ChildProcess,
  ) {
    this.boundary = boundary;
    child.stdout!.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.buffered += d.length;
      if (this.buffered > HIGH_WATER && !this.paused) {
        this.paused = true;
        child.stdout!.pause();
      }
      this.notify();
    });
    child.stderr!.on('data', (d: Buffer) => {
      this.stderrTail = (this.stderrTail + d.toString()).slice(-4000);
    });
    const end = () => {
      this.ended = true;
      this.notify();
    };
    child.stdout!.on('end', end);
    child.on('close', end);
    child.on('error', (e) => {
      this.stderrTail += `\n${e.message} (spawn ssh)`;
      end();
    });
    child.stdin!.on('error', () => undefined);
  }

  /** Starts the remote loop and waits for it to be ready. */
  static async open(session: SshSession): Promise<SshChannel> {
    const boundary = `pgbart-${randomBytes(16).toString('hex')}`;
    const channel = new SshChannel(
      session,
      boundary,
      session.spawn(`exec sh -c ${shellQuote(remoteScript(boundary))}`),
    );
    try {
      await channel.skipToReady();
    } catch (err) {
      channel.close();
      throw err;
    }
    return channel;
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private failure(doing: string): BartError {
    this.broken = true;
    const dest = this.session.destination;
    const why =
      this.stderrTail.trim() === ''
        ? `the connection closed without a message: check that sshd runs on ${this.session.target.host} and that the host is reachable`
        : explainSshFailure(this.stderrTail, { destination: dest });
    return new BartError(`lost the ssh connection to ${dest} while ${doing}: ${why}`);
  }

  /** Waits until more bytes arrive; throws when the channel ended. */
  private async more(doing: string): Promise<void> {
    if (this.ended) throw this.failure(doing);
    await new Promise<void>((r) => (this.wake = r));
    if (this.ended && this.buffered === 0) throw this.failure(doing);
  }

  private consumed(n: number): void {
    this.buffered -= n;
    if (this.paused && this.buffered < HIGH_WATER / 2) {
      this.paused = false;
      this.child.stdout!.resume();
    }
  }

  /** Takes up to `max` bytes (at least one). */
  private async takeSome(max: number, doing: string): Promise<Buffer> {
    while (this.buffered === 0) await this.more(doing);
    const first = this.chunks[0]!;
    if (first.length <= max) {
      this.chunks.shift();
      this.consumed(first.length);
      return first;
    }
    this.chunks[0] = first.subarray(max);
    this.consumed(max);
    return first.subarray(0, max);
  }

  private async takeExact(n: number, doing: string): Promise<Buffer> {
    const parts: Buffer[] = [];
    let got = 0;
    while (got < n) {
      const b = await this.takeSome(n - got, doing);
      parts.push(b);
      got += b.length;
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
  }

  /** Takes everything up to `marker` (consuming the marker too) and returns what came before it. */
  private async takeUntil(marker: Buffer, doing: string): Promise<Buffer> {
    // Each chunk is searched once (with the tail of the previous one, for a marker split between
    // them), so a long listing costs linear time; everything is joined once at the end.
    let examined = 0;
    let examinedBytes = 0;
    let carry = Buffer.alloc(0);
    for (;;) {
      while (examined < this.chunks.length) {
        const window = Buffer.concat([carry, this.chunks[examined]!]);
        const at = window.indexOf(marker);
        if (at >= 0) {
          const start = examinedBytes - carry.length + at;
          const all = Buffer.concat(this.chunks);
          const rest = all.subarray(start + marker.length);
          this.chunks.length = 0;
          if (rest.length > 0) this.chunks.push(rest);
          this.consumed(start + marker.length);
          return all.subarray(0, start);
        }
        carry = window.subarray(Math.max(0, window.length - (marker.length - 1)));
        examinedBytes += this.chunks[examined]!.length;
        examined++;
      }
      // Waiting for the marker: keep reading even past the high-water mark.
      if (this.paused) {
        this.paused = false;
        this.child.stdout!.resume();
      }
      await this.more(doing);
    }
  }

  private async skipToReady(): Promise<void> {
    // Whatever the login shell's startup files print comes before our marker.
    await this.takeUntil(READY, 'starting a remote shell');
  }

  private send(line: string): void {
    if (this.broken)
      throw new BartError(`the ssh channel to ${this.session.destination} is unusable after an earlier failure`);
    if (line.includes('\n')) throw new BartError('internal error: a remote request may not contain a newline');
    this.child.stdin!.write(line + '\n');
  }

  /** Runs one shell command line on the remote host (its output is held in memory: small outputs only). */
  async run(command: string): Promise<ChannelResult> {
    const doing = `running "${command.length > 80 ? command.slice(0, 77) + '...' : command}"`;
    this.send(command);
    const stdout = await this.takeUntil(Buffer.from(`\n${this.boundary} `), doing);
    const statusLine = (await this.takeUntil(Buffer.from('\n'), doing)).toString();
    const code = Number(statusLine);
    if (!/^\d+$/.test(statusLine)) {
      this.broken = true;
      throw new BartError(
        `unexpected answer from the remote shell on ${this.session.destination} while ${doing}: "${statusLine.slice(0, 80)}"`,
      );
    }
    const stderr = code === 0 ? '' : (await this.takeUntil(Buffer.from(`\n${this.boundary}\n`), doing)).toString();
    return { code, stdout, stderr };
  }

  /** Parses a header block of the remote tar; a damaged one means the stream's framing is lost. */
  private parseHeader(block: Buffer, doing: string): TarHeader {
    try {
      return parseTarHeader(block);
    } catch (err) {
      this.broken = true;
      const dest = this.session.destination;
      throw new BartError(`unexpected answer from the remote shell on ${dest} while ${doing}: ${errorMessage(err)}`);
    }
  }

  /**
   * Reads the body of extension header `header` (GNU long name, pax) into `extensions`, which
   * applies it to the next member's header. Returns the bytes taken: the body padded to a block.
   */
  private async takeExtension(header: TarHeader, extensions: TarExtensions, doing: string): Promise<number> {
    const padded = roundUp(header.size, BLOCK);
    extensions.add(header, (await this.takeExact(padded, doing)).subarray(0, header.size));
    return padded;
  }

  /** tar's error output after an `F` status. */
  private async tarErrors(doing: string): Promise<string> {
    return (await this.takeUntil(Buffer.from(`\n${this.boundary}\n`), doing)).toString().trim();
  }

  /**
   * Streams a remote file: undefined when it does not exist; throws when it cannot be read. The
   * caller must read it to the end or call finish() before reusing the channel.
   */
  async readFile(path: string): Promise<{ size: number; stream: ChannelFileStream } | undefined> {
    const doing = `reading ${path}`;
    const host = this.session.target.host;
    this.send(`R rd ${shellQuote(path)}`);
    const lead = (await this.takeExact(1, doing)).toString();
    if (lead === 'V') return undefined;
    if (lead !== 'T') {
      this.broken = true;
      throw new BartError(`unexpected answer from the remote shell on ${this.session.destination} while ${doing}`);
    }
    let consumed = 0;
    let header: TarHeader;
    // Extension headers (GNU long names, pax) are folded in: the member we asked for is the only one.
    const extensions = new TarExtensions();
    for (;;) {
      const block = await this.takeExact(BLOCK, doing);
      consumed += BLOCK;
      if (isZeroBlock(block)) {
        await this.takeExact(roundUp(consumed + BLOCK, TAR_RECORD) - consumed, doing);
        const status = (await this.takeExact(1, doing)).toString();
        const errors = status === 'F' ? await this.tarErrors(doing) : '';
        if (status !== 'K' && status !== 'F') this.broken = true;
        if (status === 'K' || /No such file or directory/.test(errors)) return undefined;
        if (/Permission denied/.test(errors)) {
          throw new BartError(
            `"${this.session.target.user}" cannot read "${path}" on ${host} (permission denied): the data directory must be readable by cluster_owner`,
          );
        }
        throw new BartError(`cannot read "${path}" on ${host}: ${errors.split('\n')[0] ?? 'tar failed'}`);
      }
      const parsed = this.parseHeader(block, doing);
      if (TarExtensions.isExtension(parsed)) {
        consumed += await this.takeExtension(parsed, extensions, doing);
        continue;
      }
      if (parsed.typeflag !== '0' && parsed.typeflag !== '\0') {
        this.broken = true;
        throw new BartError(`"${path}" on ${host} is not a regular file (tar type ${parsed.typeflag})`);
      }
      header = extensions.apply(parsed);
      break;
    }
    const size = header.size;
    let remaining = size;
    let done = false;
    const end = async () => {
      done = true;
      const after = consumed + roundUp(size, BLOCK);
      await this.takeExact(roundUp(after + 2 * BLOCK, TAR_RECORD) - consumed - size, doing);
      const status = (await this.takeExact(1, doing)).toString();
      if (status === 'K') return;
      if (status !== 'F') {
        this.broken = true;
        throw new BartError(`unexpected answer from the remote shell on ${this.session.destination} while ${doing}`);
      }
      throw new BartError(`reading "${path}" on ${host} failed: ${(await this.tarErrors(doing)).split('\n')[0]}`);
    };
    const stream: ChannelFileStream = {
      read: async (buffer, offset, length) => {
        if (remaining === 0) {
          if (!done) await end();
          return 0;
        }
        const b = await this.takeSome(Math.min(length, remaining), doing);
        b.copy(buffer, offset);
        remaining -= b.length;
        return b.length;
      },
      finish: async () => {
        // A few bytes more than the engine wanted (the file grew) are skipped; a whole unread
        // file (the backup failed mid-way) is not worth draining: the channel is dropped instead.
        if (remaining > MAX_DRAIN) {
          this.close();
          return;
        }
        while (remaining > 0) remaining -= (await this.takeSome(remaining, doing)).length;
        if (!done) await end();
      },
    };
    return { size, stream };
  }

  /**
   * Reads several whole files with one remote `tar` (prefetching small files saves a fork and a
   * round trip each). Returns the contents by absolute path; files that vanished, grew beyond
   * `maxMember` bytes or are not plain files are left out (the caller reads those one by one).
   */
  async readBatch(paths: string[], maxMember: number): Promise<Map<string, Buffer>> {
    const doing = `reading ${paths.length} files such as ${paths[0]}`;
    const host = this.session.target.host;
    this.send(`R rdm ${paths.map((p) => shellQuote(p)).join(' ')}`);
    if ((await this.takeExact(1, doing)).toString() !== 'T') {
      this.broken = true;
      throw new BartError(`unexpected answer from the remote shell on ${this.session.destination} while ${doing}`);
    }
    const files = new Map<string, Buffer>();
    let consumed = 0;
    const extensions = new TarExtensions();
    for (;;) {
      const block = await this.takeExact(BLOCK, doing);
      if (isZeroBlock(block)) {
        await this.takeExact(roundUp(consumed + 2 * BLOCK, TAR_RECORD) - consumed - BLOCK, doing);
        break;
      }
      consumed += BLOCK;
      const parsed = this.parseHeader(block, doing);
      if (TarExtensions.isExtension(parsed)) {
        consumed += await this.takeExtension(parsed, extensions, doing);
        continue;
      }
      const header = extensions.apply(parsed);
      const padded = roundUp(header.size, BLOCK);
      const keep = (header.typeflag === '0' || header.typeflag === '\0') && header.size <= maxMember;
      if (keep) {
        const data = await this.takeExact(padded, doing);
        files.set('/' + header.path.replace(/^\/+/, ''), Buffer.from(data.subarray(0, header.size)));
      } else {
        let left = padded;
        while (left > 0) left -= (await this.takeSome(left, doing)).length;
      }
      consumed += padded;
    }
    const status = (await this.takeExact(1, doing)).toString();
    if (status === 'K') return files;
    if (status !== 'F') {
      this.broken = true;
      throw new BartError(`unexpected answer from the remote shell on ${this.session.destination} while ${doing}`);
    }
    const errors = await this.tarErrors(doing);
    const denied = errors.split('\n').find((l) => /Permission denied/.test(l));
    if (denied)
      throw new BartError(
        `"${this.session.target.user}" cannot read a file on ${host} (${denied.replace(/^tar: /, '')}): the data directory must be readable by cluster_owner`,
      );
    // Vanished files are simply absent (the caller asks again and learns they are gone).
    return files;
  }

  /**
   * Reads `length` bytes at `position` of a remote file into `buffer` (zeros past its end, or for a
   * file that vanished, as the engines treat a file that shrank or went away).
   */
  async readRange(path: string, buffer: Buffer, offset: number, length: number, position: number): Promise<void> {
    const doing = `reading ${path} at byte ${position}`;
    const aligned = position % BLOCK_SIZE === 0 && length % BLOCK_SIZE === 0;
    const q = shellQuote(path);
    const blocks = `${position / BLOCK_SIZE} ${length / BLOCK_SIZE}`;
    this.send(aligned ? `R rg ${q} ${blocks}` : `R rb ${q} ${position} ${length}`);
    const status = (await this.takeExact(1, doing)).toString();
    if (status === 'E')
      throw new BartError(
        `"${this.session.target.user}" cannot read "${path}" on ${this.session.target.host} (permission denied): the data directory must be readable by cluster_owner`,
      );
    if (status !== 'T') {
      this.broken = true;
      throw new BartError(`unexpected answer from the remote shell on ${this.session.destination} while ${doing}`);
    }
    let got = 0;
    while (got < length) {
      const b = await this.takeSome(length - got, doing);
      b.copy(buffer, offset + got);
      got += b.length;
    }
  }

  /** Ends the remote shell. */
  close(): void {
    this.broken = true;
    this.child.stdin!.end();
    if (!this.ended) setTimeout(() => this.child.kill(), 2000).unref();
  }
}
