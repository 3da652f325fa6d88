import type { ChildProcess } from 'node:child_process';
import { BartError } from '../util/errors.js';
import { shellQuote } from '../util/shell-quote.js';
import { explainSshFailure } from './ssh-errors.js';
import type { SshSession } from './ssh-session.js';

/**
 * The remote half of a channel: a POSIX sh loop (nothing else needed on the database host) that
 * reads one request per line. `R rd PATH` streams a file framed as one status byte (V vanished,
 * E unreadable, D data); after D, the size SIZE the file had when asked and a newline, exactly SIZE
 * bytes (the first SIZE bytes, zero-padded if the file shrank meanwhile, as the engine pads a
 * relation truncated under it) and one trailer byte (0 ok, 1 read error).
 * Any other line is a shell command whose exit status, stdout and stderr come back length-framed.
 * Output of the user's shell startup files before `pgbart-ready` is skipped.
 */
const REMOTE_SCRIPT = [
  't=$(mktemp -d "${TMPDIR:-/tmp}/pgbart.XXXXXX") || exit 1',
  "trap 'rm -rf \"$t\"' EXIT",
  // rd streams large files directly; a small one is framed into a file first and sent with one
  // write, since ssh's non-interactive sessions leave Nagle on and a reply in several small writes
  // would wait for delayed ACKs (~10 ms a file instead of ~2).
  'rd() { if [ ! -e "$1" ]; then printf V; elif [ -d "$1" ] || [ ! -r "$1" ]; then printf E; else' +
    ' s=$(wc -c <"$1" 2>/dev/null) || s=0; s=$((s + 0));' +
    ' if [ "$s" -le 262144 ]; then rf "$1" "$s" >"$t/r"; cat "$t/r"; else rf "$1" "$s"; fi; fi; }',
  'rf() { printf \'D%s\\n\' "$2"; { head -c "$2" -- "$1" 2>"$t/e" || : >"$t/f"; head -c "$2" /dev/zero; } | head -c "$2";' +
    ' if [ -f "$t/f" ]; then rm -f "$t/f"; printf 1; else printf 0; fi; }',
  "printf 'pgbart-ready\\n'",
  'while IFS= read -r l; do',
  '  case $l in',
  '  "R "*) eval "${l#R }" </dev/null ;;',
  '  *) eval "$l" </dev/null >"$t/o" 2>"$t/e"; r=$?; { printf \'%s %s %s\\n\' "$r" $(wc -c <"$t/o") $(wc -c <"$t/e"); cat "$t/o" "$t/e"; } >"$t/r"; cat "$t/r" ;;',
  '  esac',
  'done',
].join('\n');

const READY = Buffer.from('pgbart-ready\n');
/** Incoming bytes buffered before ssh's output is paused (bounds memory per channel). */
const HIGH_WATER = 4 * 1024 * 1024;

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
  /** Set when the framing can no longer be trusted; the channel is then unusable. */
  broken = false;

  private constructor(
    private readonly session: SshSession,
    private readonly child: ChildProcess,
  ) {
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
    const channel = new SshChannel(session, session.spawn(`exec sh -c ${shellQuote(REMOTE_SCRIPT)}`));
    await channel.skipToReady();
    return channel;
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private failure(doing: string): BartError {
    this.broken = true;
    const why = explainSshFailure(this.stderrTail || 'connection closed', { destination: this.session.destination });
    return new BartError(`lost the ssh connection to ${this.session.destination} while ${doing}: ${why}`);
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

  private async takeLine(doing: string): Promise<string> {
    for (;;) {
      const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
      const nl = all.indexOf(10);
      if (nl >= 0) {
        this.chunks.length = 0;
        if (nl + 1 < all.length) this.chunks.push(all.subarray(nl + 1));
        this.consumed(nl + 1);
        return all.subarray(0, nl).toString();
      }
      if (all.length > 1 << 20) throw this.failure(`${doing} (no line ending in 1 MB of output)`);
      this.chunks.length = 0;
      if (all.length > 0) this.chunks.push(all);
      await this.more(doing);
    }
  }

  private async skipToReady(): Promise<void> {
    // Whatever the login shell's startup files print comes before our marker.
    for (;;) {
      const all = Buffer.concat(this.chunks);
      const at = all.indexOf(READY);
      if (at >= 0) {
        this.chunks.length = 0;
        const rest = all.subarray(at + READY.length);
        if (rest.length > 0) this.chunks.push(rest);
        this.buffered = rest.length;
        return;
      }
      await this.more('starting a remote shell');
    }
  }

  private send(line: string): void {
    if (this.broken) throw new BartError(`the ssh channel to ${this.session.destination} is unusable after an earlier failure`);
    if (line.includes('\n')) throw new BartError('internal error: a remote request may not contain a newline');
    this.child.stdin!.write(line + '\n');
  }

  /** Runs one shell command line on the remote host. */
  async run(command: string): Promise<ChannelResult> {
    const doing = `running "${command.length > 80 ? command.slice(0, 77) + '...' : command}"`;
    this.send(command);
    const header = (await this.takeLine(doing)).trim().split(/\s+/);
    const [code, outLen, errLen] = header.map(Number) as [number, number, number];
    if (header.length !== 3 || [code, outLen, errLen].some((n) => !Number.isInteger(n))) {
      this.broken = true;
      throw new BartError(`unexpected answer from the remote shell on ${this.session.destination} while ${doing}: "${header.join(' ')}"`);
    }
    const stdout = await this.takeExact(outLen, doing);
    const stderr = (await this.takeExact(errLen, doing)).toString();
    return { code, stdout, stderr };
  }

  /**
   * Streams a remote file: undefined when it does not exist; throws when it cannot be read. The
   * caller must read it to the end or call finish() before reusing the channel.
   */
  async readFile(path: string): Promise<{ size: number; stream: ChannelFileStream } | undefined> {
    const doing = `reading ${path}`;
    this.send(`R rd ${shellQuote(path)}`);
    const status = (await this.takeExact(1, doing)).toString();
    if (status === 'V') return undefined;
    if (status === 'E') throw new BartError(`"${this.session.target.user}" cannot read "${path}" on ${this.session.target.host} (permission denied or not a file): the data directory must be readable by cluster_owner`);
    const sizeText = status === 'D' ? await this.takeLine(doing) : '';
    const size = Number(sizeText);
    if (status !== 'D' || !/^\d+$/.test(sizeText) || !Number.isSafeInteger(size)) {
      this.broken = true;
      throw new BartError(`unexpected answer from the remote shell on ${this.session.destination} while ${doing}`);
    }
    let remaining = size;
    let done = false;
    const trailer = async () => {
      done = true;
      const t = (await this.takeExact(1, doing)).toString();
      if (t !== '0') {
        if (t !== '1') this.broken = true;
        throw new BartError(`reading "${path}" on ${this.session.target.host} failed (I/O error on the database host)`);
      }
    };
    const stream: ChannelFileStream = {
      read: async (buffer, offset, length) => {
        if (remaining === 0) {
          if (!done) await trailer();
          return 0;
        }
        const b = await this.takeSome(Math.min(length, remaining), doing);
        b.copy(buffer, offset);
        remaining -= b.length;
        return b.length;
      },
      finish: async () => {
        while (remaining > 0) remaining -= (await this.takeSome(remaining, doing)).length;
        if (!done) await trailer();
      },
    };
    return { size, stream };
  }

  /** Ends the remote shell. */
  close(): void {
    this.broken = true;
    this.child.stdin!.end();
    if (!this.ended) setTimeout(() => this.child.kill(), 2000).unref();
  }
}
