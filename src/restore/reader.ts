// Restore reader: one restore task's files read from a tar range or plain files, verified and written.

import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { RestoreTarget, TargetFileWriter } from '../hosts/restore-target.js';
import { decompressStream, type CompressionMethod } from '../storage/compression.js';
import { joinKey } from '../storage/storage.js';
import type { ChecksumAlgorithm } from '../catalog/backup-info.js';
import { createChecksum } from '../catalog/manifest.js';
import { tarPadding } from '../storage/tar-header.js';
import { ByteReader, nextTarHeader } from './tar-reader.js';
import { openChunks, type ChunkSource } from './chunk-source.js';
import { giveBackBuffer, takeBuffer } from '../util/buffer-shelf.js';
import { localOpener, ObjectMissingError, type ObjectOpener, type ObjectRef } from './object-source.js';

/** One file to restore, as the manifest describes it. */
export interface RestoreFileSpec {
  /** Path relative to the archive root (data directory or tablespace location). */
  path: string;
  size: number;
  mode: number;
  /** Expected hex digest of the content; absent when not verified. */
  checksum?: string;
  /** Read past it without writing (e.g. tablespace_map, which restore replaces with real links). */
  skip?: boolean;
}

/** Fields every task shares. */
interface TaskBase {
  /** Where the archive's paths go (the data directory or a tablespace location). */
  destRoot: string;
  files: RestoreFileSpec[];
  /** NONE when checksums are not verified (algorithm NONE or --disable-checksum). */
  checksumAlgorithm: ChecksumAlgorithm;
  /** Paths written under another name until the restore completes (`PG_VERSION`). */
  holdBack: Record<string, string>;
  /** For messages: the artifact or directory read. */
  label: string;
}

/**
 * A run of consecutive files in a tar artifact: decode from the unit at `offset`, skip `unitSkip`
 * decoded bytes, and the next header is the first file's (directory headers in between are skipped;
 * the restore creates directories itself).
 */
export interface TarRangeTask extends TaskBase {
  kind: 'tar-range';
  /** The tar artifact (`<id>/base.tar.lz4`). */
  artifact: ObjectRef;
  compression: CompressionMethod;
  offset: number;
  /**
   * Where the stored bytes this task needs end (exclusive): a ranged read stops there. Undefined:
   * the end of the artifact.
   */
  end?: number;
  unitSkip: number;
  /** Files may come in any order (an archive read whole from its start): match them by path. */
  anyOrder: boolean;
}

/** Files of a plain backup, each stored as `<source>/<path><extension>`. */
export interface PlainFilesTask extends TaskBase {
  kind: 'plain-files';
  /** The prefix the archive's files are stored under (`<id>/base`, `<id>/<oid>`). */
  source: ObjectRef;
  compression: CompressionMethod;
  extension: string;
}

/** Work for one restore worker. */
export type RestoreTask = TarRangeTask | PlainFilesTask;

/** What a task did. */
export interface RestoreTaskResult {
  files: number;
  bytes: number;
}

/** Writes smaller than this are gathered first: decoders emit 16-64 KB pieces, and a syscall each is slow. */
const STAGING_BYTES = 1024 * 1024;

/** Streams one file's content into the target, hashing as it goes; throws on size or checksum mismatch. */
class FileSink {
  private readonly staging = takeBuffer(STAGING_BYTES);
  private staged = 0;

  constructor(private readonly target: RestoreTarget) {}

  async copy(
    pieces: AsyncIterable<Buffer>,
    dest: string | undefined,
    spec: RestoreFileSpec,
    alg: ChecksumAlgorithm,
    where: string,
  ): Promise<number> {
    const hash = spec.checksum ? createChecksum(alg) : undefined;
    const writer: TargetFileWriter | undefined =
      dest === undefined ? undefined : await this.target.openWriter(dest, spec.mode & 0o777, spec.size);
    let bytes = 0;
    try {
      for await (const piece of pieces) {
        bytes += piece.length;
        hash?.update(piece);
        if (!writer) continue;
        if (piece.length >= STAGING_BYTES / 4) {
          await this.flush(writer);
          await writer.write(piece);
        } else {
          if (this.staged + piece.length > STAGING_BYTES) await this.flush(writer);
          piece.copy(this.staging, this.staged);
          this.staged += piece.length;
        }
      }
      if (writer) await this.flush(writer);
      if (bytes !== spec.size)
        throw new Error(
          `${where}: "${spec.path}" holds ${bytes} bytes, the manifest says ${spec.size} (damaged backup)`,
        );
      if (hash) {
        const digest = hash.digest('hex');
        if (digest !== spec.checksum) {
          throw new Error(
            `${where}: checksum mismatch for "${spec.path}" (expected ${spec.checksum}, got ${digest}): the backup is damaged`,
          );
        }
      }
      await writer?.finish();
      return bytes;
    } catch (err) {
      this.staged = 0;
      await writer?.abort();
      throw err;
    }
  }

  private async flush(writer: TargetFileWriter): Promise<void> {
    if (this.staged === 0) return;
    const n = this.staged;
    this.staged = 0;
    await writer.write(this.staging.subarray(0, n));
  }

  /** Gives the staging buffer back for the thread's next task; the sink is not used after this. */
  release(): void {
    giveBackBuffer(this.staging);
  }
}

function destination(task: TaskBase, spec: RestoreFileSpec): string | undefined {
  if (spec.skip) return undefined;
  return join(task.destRoot, task.holdBack[spec.path] ?? spec.path);
}

/** The ref of `relative` below a prefix's ref. */
export function refBelow(prefix: ObjectRef, relative: string): ObjectRef {
  return {
    key: joinKey(prefix.key, relative),
    name: joinKey(prefix.name, relative),
    ...(prefix.path !== undefined ? { path: join(prefix.path, relative) } : {}),
  };
}

async function runTarRange(
  task: TarRangeTask,
  target: RestoreTarget,
  opener: ObjectOpener,
): Promise<RestoreTaskResult> {
  let chunks;
  try {
    chunks = await openChunks(opener, task.artifact, task.compression, task.offset, task.end);
  } catch (err) {
    if (err instanceof ObjectMissingError) throw new Error(`${task.label}: missing from the backup (damaged backup)`);
    throw err;
  }
  // The reader holds at most one chunk and pulls the next only when done with it, as openChunks requires.
  const reader = new ByteReader(chunks[Symbol.asyncIterator]());
  const sink = new FileSink(target);
  const where = `${task.label} (from byte ${task.offset})`;
  let files = 0;
  let bytes = 0;
  try {
    if (!(await reader.skip(task.unitSkip)))
      throw new Error(`${where}: archive ends before the first entry of this range`);
    const byPath = task.anyOrder ? new Map(task.files.map((f) => [f.path, f])) : undefined;
    let next = 0;
    while (byPath ? byPath.size > 0 : next < task.files.length) {
      const expected = byPath ? undefined : task.files[next]!;
      let header;
      try {
        header = await nextTarHeader(reader);
      } catch (err) {
        throw new Error(`${where}: ${(err as Error).message} (damaged archive)`);
      }
      if (!header) {
        const missing = expected?.path ?? byPath!.keys().next().value;
        throw new Error(
          `${where}: archive ends before "${missing}", which the manifest lists (damaged or truncated backup)`,
        );
      }
      if (header.type !== 'file') {
        // Directories and links are created from the manifest; their headers carry no data.
        if (!(await reader.skip(header.size + tarPadding(header.size)))) throw new Error(`${where}: archive truncated`);
        continue;
      }
      const spec = byPath ? byPath.get(header.path) : expected;
      if (!spec || spec.path !== header.path) {
        const listed = expected ? ` where the manifest lists "${expected.path}"` : ', which the manifest does not list';
        throw new Error(`${where}: found "${header.path}"${listed} (manifest and archive disagree)`);
      }
      if (header.size !== spec.size) {
        throw new Error(
          `${where}: "${header.path}" is ${header.size} bytes in the archive, ${spec.size} in the manifest (damaged backup)`,
        );
      }
      const dest = destination(task, spec);
      try {
        const n = await sink.copy(reader.stream(header.size), dest, spec, task.checksumAlgorithm, task.label);
        // Files read past (tablespace_map, a delta restore's kept files) are not counted as restored.
        if (dest !== undefined) bytes += n;
      } catch (err) {
        const msg = (err as Error).message;
        throw new Error(msg.startsWith(task.label) ? msg : `${where}: ${msg}`);
      }
      await reader.skip(tarPadding(header.size));
      byPath?.delete(header.path);
      if (dest !== undefined) files++;
      next++;
    }
    return { files, bytes };
  } finally {
    chunks.close();
    sink.release();
  }
}

/**
 * A plain backup's stored file: `<path><extension>` opened with `open` as `compression`, or, in a compressed backup,
 * `<path>` kept uncompressed (PostgreSQL's backup_manifest) opened as `none`. Rejects naming the file when neither
 * exists.
 */
async function openStoredPlain<T>(
  root: ObjectRef,
  path: string,
  extension: string,
  compression: CompressionMethod,
  label: string,
  open: (ref: ObjectRef, compression: CompressionMethod) => Promise<T>,
): Promise<T> {
  try {
    return await open(refBelow(root, path + extension), compression);
  } catch (err) {
    if (!(err instanceof ObjectMissingError)) throw err;
  }
  try {
    if (extension !== '') return await open(refBelow(root, path), 'none');
  } catch (err) {
    if (!(err instanceof ObjectMissingError)) throw err;
  }
  throw new Error(`${label}: "${path}" is missing from the backup (damaged backup)`);
}

/** {@link openStoredPlain} as a decoded stream. */
export function openPlainFile(
  opener: ObjectOpener,
  root: ObjectRef,
  path: string,
  extension: string,
  compression: CompressionMethod,
  label: string,
): Promise<Readable> {
  return openStoredPlain(root, path, extension, compression, label, async (ref, method) =>
    decompressStream(await opener.open(ref), method),
  );
}

/** {@link openStoredPlain} for a restore worker: the stored file's decoded chunks (see {@link openChunks}). */
function openPlainChunks(
  opener: ObjectOpener,
  root: ObjectRef,
  path: string,
  extension: string,
  compression: CompressionMethod,
  label: string,
): Promise<ChunkSource> {
  return openStoredPlain(root, path, extension, compression, label, (ref, method) => openChunks(opener, ref, method));
}

async function runPlainFiles(
  task: PlainFilesTask,
  target: RestoreTarget,
  opener: ObjectOpener,
): Promise<RestoreTaskResult> {
  const sink = new FileSink(target);
  let files = 0;
  let bytes = 0;
  try {
    for (const spec of task.files) {
      const chunks = await openPlainChunks(
        opener,
        task.source,
        spec.path,
        task.extension,
        task.compression,
        task.label,
      );
      try {
        bytes += await sink.copy(
          chunks,
          destination(task, spec),
          spec,
          task.checksumAlgorithm,
          `${task.label}/${spec.path}`,
        );
      } finally {
        chunks.close();
      }
      files++;
    }
  } finally {
    sink.release();
  }
  return { files, bytes };
}

/**
 * Runs one restore task against a target (in a worker thread, or inline), reading stored objects
 * with `opener` (by default from their local paths).
 */
export async function runRestoreTask(
  task: RestoreTask,
  target: RestoreTarget,
  opener: ObjectOpener = localOpener,
): Promise<RestoreTaskResult> {
  return task.kind === 'tar-range' ? runTarRange(task, target, opener) : runPlainFiles(task, target, opener);
}
