// Restore target: the interface through which RESTORE writes a cluster to this host or over ssh.

/**
 * Where RESTORE writes a cluster: this host (direct file access, LocalRestoreTarget) or another
 * host over ssh (SshRestoreTarget). The restore engine and the incremental patching only talk to
 * this interface, so full backups and incremental chains restore the same way to either.
 */

import type { FileHashName } from '../util/file-hash.js';

/** What is at a path we are about to restore into. */
export type PathState =
  | { kind: 'absent'; /** Nearest existing ancestor directory. */ existingParent: string }
  | { kind: 'empty'; /** Permission bits, put back if a failed restore empties it again. */ mode: number }
  | { kind: 'not-empty'; /** One entry found inside, for the message. */ sample: string }
  | { kind: 'not-directory' };

/** Free space of the file system that holds (or will hold) a path. */
export interface FreeSpace {
  /** The existing directory that was measured. */
  measuredAt: string;
  /** Identifies the file system, so requirements on the same one can be added up. */
  device: string;
  freeBytes: number;
}

/** A file being written on the target; `finish()` closes it (durable after {@link RestoreTarget.syncTree}), `abort()` drops it. */
export interface TargetFileWriter {
  /**
   * Appends `chunk`. The caller reuses its memory once this resolves (restore workers decode into
   * recycled buffers): a writer that holds data longer keeps a copy.
   */
  write(chunk: Uint8Array): Promise<void>;
  /** Completes the file. */
  finish(): Promise<void>;
  /** Closes without syncing (the caller removes what it wrote). */
  abort(): Promise<void>;
}

/**
 * An existing file being patched in place (incremental restore): cut or extended with zeros to its
 * final length, then ranges overwritten. Nothing need be visible before `finish()` (remote targets
 * batch patches until {@link RestoreTarget.flush}).
 */
export interface TargetFilePatcher {
  /** Overwrites the file at byte `position` with `data`; positions only grow from call to call. */
  write(data: Uint8Array, position: number): Promise<void>;
  /** Completes the patch. */
  finish(): Promise<void>;
  /** Drops the patch (the restore fails and removes what it wrote). */
  abort(): Promise<void>;
}

/** One entry of a restored tree, relative to the walked root. */
export interface TargetEntry {
  /** POSIX relative path. */
  path: string;
  type: 'file' | 'dir' | 'symlink';
}

/** What a delta restore learns of a file already on the target. */
export interface TargetFileState {
  size: number;
  /** Permission bits. */
  mode: number;
  /** Hex digest of the content; only when asked for and the size was the expected one. */
  digest?: string;
}

/** A file a delta restore asks about: its path relative to the root, and the size the backup gives it. */
export interface FileToCompare {
  path: string;
  size: number;
}

/** Serializable description of a target, from which a worker thread rebuilds it. */
export type RestoreTargetSpec =
  | { kind: 'local'; /** uid/gid to chown written files to (root only). */ owner?: { uid: number; gid: number } }
  | {
      kind: 'ssh';
      user: string;
      host: string;
      /** The main thread's ssh ControlMaster socket, shared by the workers. */ controlPath: string;
    };

/** Operations RESTORE needs on the host that receives the cluster. */
export interface RestoreTarget {
  /**
   * Human text for messages only (`local` or `user@host`); never parse it: which kind of target
   * this is, and its ssh user and host, are in {@link spec}.
   */
  readonly description: string;
  /** What a worker thread needs to rebuild this target; `kind`, `user` and `host` say where it writes. */
  readonly spec: RestoreTargetSpec;
  /** Absent / empty / not empty / not a directory. */
  inspect(path: string): Promise<PathState>;
  /** True when this process may create entries in the directory `dir`. */
  writable(dir: string): Promise<boolean>;
  /** Free space where `path` is or will be (measured at its nearest existing ancestor). */
  freeSpace(path: string): Promise<FreeSpace>;
  /** mkdir -p; directories it creates get `mode`. */
  makeDir(path: string, mode: number): Promise<void>;
  /** Sets permission bits. */
  chmod(path: string, mode: number): Promise<void>;
  /** Writes a whole small file (config files, markers). */
  writeFile(path: string, data: string, mode: number): Promise<void>;
  /** Reads a whole small file; undefined when absent. */
  readFile(path: string): Promise<string | undefined>;
  /**
   * Opens a new file for streaming content into it, creating missing parent directories. `size`
   * (the bytes that will be written) is required by targets that frame files, e.g. tar over ssh.
   */
  openWriter(path: string, mode: number, size?: number): Promise<TargetFileWriter>;
  /**
   * Opens an existing file for patching, to end up `length` bytes long with `bytes` bytes written
   * through the patcher. Undefined when the file does not exist (targets that learn it only when
   * the patch is applied fail in {@link flush} instead).
   */
  openPatcher(path: string, length: number, bytes: number): Promise<TargetFilePatcher | undefined>;
  /** Makes every file written and patched so far complete on the target (remote targets batch them). */
  flush(): Promise<void>;
  /** Lists `root` recursively, directories before their contents, without following symlinks. */
  walk(root: string): AsyncIterable<TargetEntry>;
  symlink(linkTarget: string, path: string): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  /** Removes a file, a symlink or a directory tree; absent is fine. */
  remove(path: string): Promise<void>;
  /** Removes everything inside a directory, keeping the directory. */
  emptyDir(path: string): Promise<void>;
  /** Gives a tree to an OS user (only possible as root). */
  chownTree(path: string, uid: number, gid: number): Promise<void>;
  /** fsyncs a directory (after renames and creates in it). */
  syncDir(path: string): Promise<void>;
  /** Makes everything written under `path` durable (files are not synced one by one as they are written). */
  syncTree(path: string): Promise<void>;
  /**
   * Delta restore: size, permission bits and, for files of the expected size, the `hash` digest of
   * each regular file under `root` (crc32c, sha256 or md5; none: no digest). Absent files and anything
   * that is not a regular file (a symlink included) are left out of the map.
   */
  compareFiles(
    root: string,
    files: FileToCompare[],
    hash: FileHashName | 'none',
  ): Promise<Map<string, TargetFileState>>;
  /** The first `length` bytes of a regular file (fewer when it is shorter); undefined when absent. */
  readHead(path: string, length: number): Promise<Buffer | undefined>;
  /** True when a process with this pid exists on the target host (a running postmaster). */
  processAlive(pid: number): Promise<boolean>;
  /** Completes what is still being written and releases connections (remote targets; a restore task ends with it). */
  close?(): Promise<void>;
}
