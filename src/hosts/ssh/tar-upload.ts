// Tar upload (ssh driver): files streamed into tar -x on a remote host over one ssh session.

import type { ChildProcess } from 'node:child_process';
import { BartError } from '../../util/errors.js';
import { explainSshFailure } from './errors.js';
import type { SshSession } from './session.js';
import type { TargetFileWriter } from '../restore-target.js';
import { TAR_BLOCK, tarFileHeader, tarPadding } from '../../storage/tar-header.js';

/**
 * Streams files into `tar -x` on a remote host over one multiplexed ssh session: one session per
 * restore task (not per file), so the data crosses the network once and tar, found on every host,
 * writes it. {@link finish} ends the archive and reports tar's failures (e.g. a full disk).
 */
export class TarUpload {
  private readonly child: ChildProcess;
  private stderr = '';
  private exited: Promise<number>;
  private failed: Error | undefined;
  private current: { path: string; left: number } | undefined;
  private aborted = false;

  constructor(private readonly session: SshSession) {
    // -p: modes from the archive, not the umask; -m: no mtime restore (PostgreSQL does not care).
    this.child = session.spawn('exec tar -x -f - -b 20 -p -m -C /');
    this.child.stderr!.on('data', (d: Buffer) => (this.stderr = (this.stderr + d.toString()).slice(-4000)));
    this.child.stdin!.on('error', (err) => (this.failed ??= err));
    this.exited = new Promise((resolvePromise) => {
      this.child.on('error', (err) => {
        this.failed ??= err;
        resolvePromise(-1);
      });
      this.child.on('close', (code) => resolvePromise(code ?? -1));
    });
  }

  /** What went wrong on the remote side, as one line. */
  private async remoteError(): Promise<BartError> {
    const code = await Promise.race([this.exited, new Promise<number>((r) => setTimeout(() => r(-2), 3000))]);
    const dest = this.session.destination;
    const text = this.stderr.trim();
    if (/No space left on device/.test(text))
      return new BartError(
        `the disk of ${dest} is full (tar: ${text
          .split('\n')
          .find((l) => /No space/.test(l))
          ?.replace(/^tar: /, '')})`,
      );
    if (code === 255 || code === -1 || code === -2 || text === '')
      return new BartError(
        `lost the ssh connection to ${dest} while restoring: ${explainSshFailure(text || 'connection closed', { destination: dest })}`,
      );
    return new BartError(
      `writing the restore on ${dest} failed: ${text
        .split('\n')
        .filter((l) => !/Exiting with failure/.test(l))
        .slice(0, 2)
        .join('; ')}`,
    );
  }

  private async write(data: Buffer | Uint8Array): Promise<void> {
    if (this.aborted) throw new BartError('internal error: write after abort');
    if (this.failed || this.child.exitCode !== null) throw await this.remoteError();
    // The stream keeps a reference until the bytes reach the pipe, and callers reuse their buffers
    // (the restore reader's staging buffer) as soon as write() returns: hand over a copy.
    if (!this.child.stdin!.write(Buffer.from(data))) {
      await new Promise<void>((resolvePromise) => {
        const done = () => {
          this.child.stdin!.off('drain', done);
          this.child.off('close', done);
          resolvePromise();
        };
        this.child.stdin!.on('drain', done);
        this.child.on('close', done);
      });
      if (this.failed || this.child.exitCode !== null) throw await this.remoteError();
    }
  }

  /** Starts a file of exactly `size` bytes; write its content through the returned writer. */
  async open(path: string, mode: number, size: number): Promise<TargetFileWriter> {
    if (this.current) throw new BartError(`internal error: "${this.current.path}" is still being written over ssh`);
    // Member names are relative: tar -x -C / puts them back at their absolute place.
    await this.write(tarFileHeader(path.replace(/^\/+/, ''), size, mode, Math.floor(Date.now() / 1000)));
    const file = { path, left: size };
    this.current = file;
    return {
      write: async (chunk) => {
        if (chunk.length > file.left) throw new BartError(`"${path}" got more bytes than the ${size} announced`);
        file.left -= chunk.length;
        await this.write(chunk);
      },
      finish: async () => {
        if (file.left !== 0) throw new BartError(`"${path}" is ${file.left} bytes short of the ${size} announced`);
        await this.write(Buffer.alloc(tarPadding(size)));
        this.current = undefined;
      },
      abort: async () => {
        // The archive cannot be resumed after a partial member: stop tar; the caller removes what was written.
        this.current = undefined;
        this.aborted = true;
        this.child.kill();
      },
    };
  }

  /** Ends the archive and waits for tar; throws what went wrong remotely. */
  async finish(): Promise<void> {
    if (this.aborted) {
      await this.exited;
      return;
    }
    if (this.failed) throw await this.remoteError();
    await this.write(Buffer.alloc(2 * TAR_BLOCK));
    this.child.stdin!.end();
    const code = await this.exited;
    if (code !== 0) throw await this.remoteError();
  }
}
