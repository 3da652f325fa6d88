// Untrusted paths: the one check every path from outside the process passes before pgbart uses it.
//
// Paths reach the BART host from database hosts (directory listings, tablespace locations), from the
// repository (manifests, backupinfo, tar member names) and from sockets (scanner requests). Any of
// them may be crafted: `../../etc/cron.d/x` joined onto a backup or restore directory would write
// outside it. Every such path is checked here, once, where it enters, and refused with a message
// naming the path and where it came from.

import { BartError } from './errors.js';

/** PostgreSQL's MAXPGPATH: no path inside a data directory (or a tablespace location) is longer. */
const MAX_PATH_BYTES = 1024;
/** NAME_MAX of the file systems PostgreSQL runs on. */
const MAX_COMPONENT_BYTES = 255;
/** Control characters (newline, NUL, escape sequences…): PostgreSQL never names a file with them. */
const CONTROL = /[\u0000-\u001f\u007f]/;

/** Quotes a refused value for an error message: JSON escapes make newlines and NULs visible. */
function shown(value: string): string {
  return JSON.stringify(value.length > 200 ? `${value.slice(0, 200)}…` : value);
}

/** Why `path` is not a clean relative path, or undefined when it is one. */
export function relativePathProblem(path: unknown): string | undefined {
  if (typeof path !== 'string') return 'is not a string';
  if (path === '') return 'is empty';
  if (CONTROL.test(path)) return 'contains a control character (newline, NUL, …)';
  if (Buffer.byteLength(path) >= MAX_PATH_BYTES) return `is longer than ${MAX_PATH_BYTES - 1} bytes`;
  if (path.startsWith('/')) return 'is absolute';
  for (const part of path.split('/')) {
    if (part === '') return 'has an empty component (`//` or a trailing `/`)';
    if (part === '.' || part === '..') return `has a "${part}" component`;
    if (Buffer.byteLength(part) > MAX_COMPONENT_BYTES)
      return `has a component longer than ${MAX_COMPONENT_BYTES} bytes`;
  }
  return undefined;
}

/**
 * Returns `path` when it is relative, normalized and of a shape a data directory can hold (no `..`,
 * `.`, empty or absolute components, no control characters, shorter than MAXPGPATH); throws a
 * BartError naming the path and `origin` (e.g. `the directory listing of postgres@db1`) otherwise.
 */
export function checkRelativePath(path: unknown, origin: string): string {
  const problem = relativePathProblem(path);
  if (problem) throw new BartError(`refusing path ${shown(String(path))} from ${origin}: it ${problem}`);
  return path as string;
}

/** Like {@link checkRelativePath} for one file name (no `/`): archived WAL, MBM and catalog entry names. */
export function checkFileName(name: unknown, origin: string): string {
  checkRelativePath(name, origin);
  if ((name as string).includes('/'))
    throw new BartError(`refusing file name ${shown(name as string)} from ${origin}: it contains "/"`);
  return name as string;
}

/** Why `path` is not an absolute, normalized path without control characters, or undefined when it is one. */
export function absolutePathProblem(path: unknown): string | undefined {
  if (typeof path !== 'string' || !path.startsWith('/') || path.length === 1) return 'is not an absolute path';
  return relativePathProblem(path.slice(1));
}

/**
 * Returns `path` when it is an absolute, normalized path without control characters (a tablespace
 * location); throws a BartError naming it and `origin` otherwise.
 */
export function checkAbsolutePath(path: unknown, origin: string): string {
  const problem = absolutePathProblem(path);
  if (problem) throw new BartError(`refusing path ${shown(String(path))} from ${origin}: it ${problem}`);
  return path as string;
}

/** Returns `text` when it has no control characters (a symlink target, a name); throws otherwise. */
export function checkPrintable(text: unknown, what: string, origin: string): string {
  if (typeof text === 'string' && !CONTROL.test(text) && Buffer.byteLength(text) < MAX_PATH_BYTES) return text;
  throw new BartError(
    `refusing ${what} ${shown(String(text))} from ${origin}: it is not a printable string shorter than ${MAX_PATH_BYTES} bytes`,
  );
}

/** The parent of a relative path (`''` for a top-level entry). */
export function parentOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash < 0 ? '' : path.slice(0, slash);
}

/**
 * Checks the shape of a tree as it is listed: every path clean, and every entry's parent a directory
 * of the same listing (never a symlink or a file), so that nothing written from the listing can go
 * through a symlink or outside the root. Keeps only the directories and symlinks seen (a few thousand
 * in a cluster), never the files.
 *
 * `inOrder` listings (directory walks) list a directory before its contents and are checked as they
 * stream; others (manifests written by parallel workers) are checked by {@link finish}.
 */
export class TreeShapeCheck {
  private readonly dirs = new Set<string>(['']);
  private readonly links = new Set<string>();
  private readonly parentsNeeded = new Map<string, string>();

  constructor(
    private readonly origin: string,
    private readonly inOrder: boolean,
  ) {}

  /** Checks one entry; throws a BartError naming it and the listing's origin. */
  add(path: unknown, type: 'file' | 'dir' | 'symlink'): string {
    const clean = checkRelativePath(path, this.origin);
    const parent = parentOf(clean);
    if (this.links.has(parent)) this.refuse(clean, `its parent "${parent}" is a symlink`);
    if (this.inOrder && !this.dirs.has(parent))
      this.refuse(clean, `its parent "${parent}" is not a directory listed before it`);
    if (!this.inOrder && !this.dirs.has(parent)) this.parentsNeeded.set(parent, clean);
    if (type === 'dir' || type === 'symlink') {
      if (this.dirs.has(clean) || this.links.has(clean)) this.refuse(clean, 'it is listed twice');
      (type === 'dir' ? this.dirs : this.links).add(clean);
    }
    return clean;
  }

  /** For listings not in walk order: every parent needed must have turned out to be a directory. */
  finish(): void {
    for (const [parent, child] of this.parentsNeeded) {
      if (!this.dirs.has(parent)) this.refuse(child, `its parent "${parent}" is not a directory of the listing`);
    }
  }

  private refuse(path: string, why: string): never {
    throw new BartError(`refusing path ${shown(path)} from ${this.origin}: ${why}`);
  }
}
