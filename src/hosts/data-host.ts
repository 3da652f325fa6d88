// Data host: the interface through which backups list and read a data directory on some host.

/** One entry of a data directory listing, relative to the directory walked. */
export interface HostEntry {
  /** POSIX relative path, e.g. `base/5/16384`. */
  path: string;
  type: 'file' | 'dir' | 'symlink';
  size: number;
  /** Permission bits (e.g. 0o600). */
  mode: number;
  mtimeMs: number;
  /** For symlinks: where they point. */
  linkTarget?: string;
}

/** An open file on a host, read at explicit positions so several readers never share a cursor. */
export interface HostFile {
  /** Reads up to `length` bytes at `position` into `buffer` at `offset`; returns bytes read (0 at end). */
  read(buffer: Buffer, offset: number, length: number, position: number): Promise<number>;
  close(): Promise<void>;
}

/** How a file will be read. */
export interface OpenOptions {
  /** Reads jump to block positions instead of going front to back. */
  random?: boolean;
}

/**
 * Where a data directory lives: this host (direct file access) or another one (over ssh, the
 * remote issue). The backup engine reads through this interface only.
 */
export interface DataHost {
  /** For messages: `local` or `user@host`. */
  readonly description: string;
  /**
   * Lists `root` recursively (directories before their contents, names sorted), without following
   * symlinks. Entries that vanish while we walk (a hot database drops files) are left out.
   */
  walk(root: string): AsyncIterable<HostEntry>;
  /**
   * Opens a file for reading; undefined when it no longer exists. Files are read front to back
   * unless `random` says the reads jump (incremental backups read only changed blocks): hosts that
   * stream whole files (ssh) then fetch each requested range instead.
   */
  open(path: string, opts?: OpenOptions): Promise<HostFile | undefined>;
  /** Closes connections the host holds. */
  close(): Promise<void>;
}
