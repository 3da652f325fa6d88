// Concept: the asynchronous-archiving spool — durable queue, "done" markers and the archiver's last error, on the BART host.

import { createReadStream } from 'node:fs';
import { open, readdir, readFile, rename, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { BartConfig, ServerConfig } from '../config/types.js';
import { isValidWalSegmentSize, MAX_WAL_SEGMENT_SIZE } from '../postgres/constants.js';
import { BartError, errorMessage, isErrnoError } from '../util/errors.js';
import { ensureDir, fsyncDir, tempSibling, writeFileAtomic } from '../util/fs-atomic.js';
import { parseArchiveFileName } from '../wal/segment-name.js';
import { requireArchiveFileName, sameContent } from './wal-archive.js';
import { writeAll } from '../util/write-all.js';
import { DirectAppender } from '../util/direct-writer.js';

/*
 * Layout of a server's spool (`<spool_path>/<server>`, default `backup_path/<server>/archive-spool`):
 *
 *   queue/<walfile>   a WAL file ARCHIVE-PUSH acknowledged to PostgreSQL: written to a temp sibling,
 *                     fsynced, renamed, directory fsynced — only then does ARCHIVE-PUSH exit 0. The
 *                     archiver removes it once the push into the repository is durable.
 *   done/<walfile>    a "done" marker: the archiver pushed this file straight from pg_wal (look-ahead
 *                     at archive_status/*.ready) and the repository holds it durably. It holds the
 *                     identity of the pg_wal file it read (device, inode, size, mtime to the
 *                     nanosecond, as `stat -c '%d %i %s %.9Y'` prints it): the archive_command
 *                     acknowledges at once only when %p still has exactly that identity, and removes
 *                     the marker as it does.
 *   last-error        the archiver's last failure (one line), cleared by its next success.
 *   archiver.lock     held by the one running archiver (catalog/lock.ts protocol).
 */

/** The directories and files of one server's spool. */
export interface SpoolPaths {
  root: string;
  queue: string;
  done: string;
  lastError: string;
}

/** The spool of a server. */
export function spoolPaths(config: BartConfig, server: ServerConfig): SpoolPaths {
  const root =
    config.global.spoolPath !== undefined
      ? join(config.global.spoolPath, server.name)
      : join(config.global.backupPath, server.name, 'archive-spool');
  return { root, queue: join(root, 'queue'), done: join(root, 'done'), lastError: join(root, 'last-error') };
}

/** Creates the spool directories (private to the BART user). */
export async function prepareAsyncSpool(paths: SpoolPaths): Promise<void> {
  try {
    await ensureDir(paths.queue, 0o700);
    await ensureDir(paths.done, 0o700);
  } catch (err) {
    throw new BartError(`cannot use the archive spool "${paths.root}": ${errorMessage(err)}`);
  }
}

/** WAL archive files waiting in the queue, oldest name first (temp files of a dead push are not counted). */
export async function queuedFiles(paths: SpoolPaths): Promise<string[]> {
  try {
    return (await readdir(paths.queue)).filter((n) => parseArchiveFileName(n) !== undefined).sort();
  } catch (err) {
    if (isErrnoError(err) && err.code === 'ENOENT') return [];
    throw new BartError(`cannot read the archive spool "${paths.queue}": ${errorMessage(err)}`);
  }
}

/** The archiver's last failure, or undefined. */
export async function readLastError(paths: SpoolPaths): Promise<string | undefined> {
  try {
    const text = (await readFile(paths.lastError, 'utf8')).trim();
    return text === '' ? undefined : text.slice(0, 2000);
  } catch {
    return undefined;
  }
}

/** Records the archiver's failure where ARCHIVE-PUSH and CHECK-CONFIG read it. */
export async function recordLastError(paths: SpoolPaths, message: string): Promise<void> {
  await writeFileAtomic(paths.lastError, `${new Date().toISOString()} ${message.replace(/\s*\n\s*/g, ' ')}\n`).catch(
    () => undefined,
  );
}

/** Clears the failure record after a success. */
export async function clearLastError(paths: SpoolPaths): Promise<void> {
  await unlink(paths.lastError).catch(() => undefined);
}

/**
 * Identity of a pg_wal file as the marker records it and the sh fast path compares it:
 * `stat -c '%d %i %s %.9Y'` (GNU coreutils) prints exactly this.
 */
export async function fileIdentity(path: string): Promise<string> {
  const st = await stat(path, { bigint: true });
  const ns = st.mtimeNs;
  return `${st.dev} ${st.ino} ${st.size} ${ns / 1_000_000_000n}.${(ns % 1_000_000_000n).toString().padStart(9, '0')}`;
}

/**
 * True (and the marker removed) when the archiver already pushed exactly this pg_wal file: the marker
 * exists and `path` still has the identity it records. Anything else — no marker, another identity
 * (a file re-written after a crash, another timeline's file recycled under this name) — is false,
 * and the caller archives the file the ordinary way.
 */
export async function consumeDoneMarker(paths: SpoolPaths, name: string, path: string): Promise<boolean> {
  const marker = join(paths.done, name);
  let recorded: string;
  try {
    recorded = (await readFile(marker, 'utf8')).trim();
  } catch {
    return false;
  }
  let actual: string;
  try {
    actual = await fileIdentity(path);
  } catch {
    return false;
  }
  if (recorded !== actual) return false;
  await unlink(marker).catch(() => undefined);
  return true;
}

/** Largest non-segment file (.history, .backup) queued: a few lines each. */
const MAX_SMALL_FILE = 16 * 1024 * 1024;
/** Offset of xlp_seg_size in a WAL segment's long page header. */
const XLP_SEG_SIZE_OFFSET = 32;

/**
 * Queues WAL file `name` (bytes from `input`) durably: temp file, fsync, rename, directory fsync.
 * A segment must be as long as its header announces (a cut transfer or a short file is refused,
 * never queued). The same name queued already with the same bytes is a success; different bytes
 * are an error that keeps the queued file (PostgreSQL never archives two contents under one name).
 */
export async function enqueue(
  paths: SpoolPaths,
  name: string,
  input: () => AsyncIterable<Buffer>,
  label: string,
): Promise<'queued' | 'already-queued'> {
  const parsed = requireArchiveFileName(name, 'WAL file name');
  const isSegment = parsed.kind === 'segment' || parsed.kind === 'partial';
  const max = isSegment ? MAX_WAL_SEGMENT_SIZE : MAX_SMALL_FILE;
  const target = join(paths.queue, name);
  const tmp = tempSibling(target);
  let count = 0;
  let head = Buffer.alloc(0);
  const handle = await open(tmp, 'wx', 0o600).catch((err: unknown) => {
    throw new BartError(`cannot queue ${label} in the archive spool "${paths.queue}": ${errorMessage(err)}`);
  });
  // A 16 MB segment goes mostly past the page cache (util/direct-writer.ts): the archiver reads it once, soon.
  const appender = new DirectAppender(handle.fd, (data, position) => writeAll(handle, data, position));
  try {
    try {
      // Chunks may share one reused buffer: each is written (and its head bytes copied) before the next.
      for await (const chunk of input()) {
        count += chunk.length;
        if (count > max) throw new BartError(`${label} is larger than ${max} bytes; refusing to archive it`);
        if (head.length < XLP_SEG_SIZE_OFFSET + 4) head = Buffer.concat([head, chunk.subarray(0, 64)]);
        await appender.write(chunk);
      }
    } catch (err) {
      if (err instanceof BartError) throw err;
      throw new BartError(`cannot read WAL file ${label}: ${errorMessage(err)}`);
    }
    if (isSegment) {
      const announced = head.length >= XLP_SEG_SIZE_OFFSET + 4 ? head.readUInt32LE(XLP_SEG_SIZE_OFFSET) : 0;
      if (!isValidWalSegmentSize(count) || count !== announced)
        throw new BartError(
          `${label} is ${count} bytes, not a complete WAL segment (its header announces ${announced}); refusing to archive it`,
        );
    } else if (count === 0) {
      throw new BartError(`${label} is empty; refusing to archive it`);
    }
    await appender.finish();
    await handle.sync();
    await handle.close();
  } catch (err) {
    await appender.abort();
    await handle.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    if (err instanceof BartError) throw err;
    throw new BartError(`cannot queue ${label} in the archive spool "${paths.queue}": ${errorMessage(err)}`);
  }
  try {
    const existing = await stat(target).catch(() => undefined);
    if (existing !== undefined) {
      const same = await sameContent(createReadStream(tmp), createReadStream(target));
      await unlink(tmp).catch(() => undefined);
      if (!same)
        throw new BartError(
          `${label} differs from the "${name}" already queued for archiving in "${paths.queue}"; the queued file was kept. ` +
            'Two servers may be archiving under one server name, or the server was re-created: check archive_command',
        );
      // It may be another push's file whose directory entry is not durable yet.
      await fsyncDir(paths.queue);
      return 'already-queued';
    }
    await rename(tmp, target);
    await fsyncDir(paths.queue);
    return 'queued';
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    if (err instanceof BartError) throw err;
    throw new BartError(`cannot queue ${label} in the archive spool "${paths.queue}": ${errorMessage(err)}`);
  }
}

/** Removes a queued file once the repository holds it durably (a crash before this only means it is pushed again). */
export async function dequeue(paths: SpoolPaths, name: string): Promise<void> {
  await unlink(join(paths.queue, name)).catch(() => undefined);
}

/** Writes the done marker of a file pushed from pg_wal, holding the identity it had when read. */
export async function writeDoneMarker(paths: SpoolPaths, name: string, identity: string): Promise<void> {
  await writeFileAtomic(join(paths.done, name), `${identity}\n`);
}

/** Names that have a done marker. */
export async function doneMarkers(paths: SpoolPaths): Promise<string[]> {
  try {
    return (await readdir(paths.done)).filter((n) => parseArchiveFileName(n) !== undefined);
  } catch {
    return [];
  }
}
