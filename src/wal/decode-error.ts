// WAL decode error: a WAL file that cannot be decoded, named with the byte offset of the fault.

/**
 * A WAL file that cannot be decoded: bad page header, bad record, CRC mismatch, truncation.
 * The message names the file and the byte offset in it, so an operator can look at the spot
 * (e.g. with pg_waldump or hexdump).
 */
export class WalDecodeError extends Error {
  /** File (or label) being decoded. */
  readonly file: string;
  /** Byte offset inside that file. */
  readonly offset: number;
  /** The problem without the location prefix. */
  readonly reason: string;

  constructor(file: string, offset: number, reason: string) {
    super(`invalid WAL in "${file}" at byte offset ${offset} (0x${offset.toString(16).toUpperCase()}): ${reason}`);
    this.name = 'WalDecodeError';
    this.file = file;
    this.offset = offset;
    this.reason = reason;
  }
}
