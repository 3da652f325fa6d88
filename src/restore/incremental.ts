// Restore of incrementals: each incremental of a chain applied on top of the restored full backup.

import { joinKey } from '../storage/storage.js';
import { crc32c } from '../util/crc32c.js';
import { join } from 'node:path';
import type { RestoreTarget } from '../hosts/restore-target.js';
import { compressionExtension, decompressStream } from '../storage/compression.js';
import { BartError, errorMessage } from '../util/errors.js';
import { log } from '../util/log.js';
import type { ChecksumAlgorithm } from '../catalog/backup-info.js';
import type { CatalogEntry } from '../catalog/catalog.js';
import { readRestoredState } from '../catalog/chain.js';
import { fileKey, type IncrementalManifestEntry } from '../catalog/incremental-format.js';
import { BLOCK_SIZE } from '../postgres/constants.js';
import { MANIFEST_FILE, PLAIN_BASE_DIR, tarName } from '../catalog/layout.js';
import { createChecksum, readManifest } from '../catalog/manifest.js';
import { tarPadding } from '../storage/tar-header.js';
import { ByteReader, nextTarHeader } from './tar-reader.js';
import { ObjectMissingError, objectRef, storageOpener } from './object-source.js';
import { openPlainFile } from './reader.js';

/** Where and how the incrementals of a chain are applied on top of the restored full backup. */
export interface ApplyOptions {
  /** Restore root of each archive of the newest backup (`base` → the data directory, OID → location). */
  destinations: Map<string, string>;
  /** Base-archive paths written under another name until the end (`PG_VERSION`). */
  holdBack: Record<string, string>;
  /** NONE: do not verify checksums. */
  checksumAlgorithm: ChecksumAlgorithm;
  target: RestoreTarget;
  /** Names in the data directory that the restore itself keeps there (its in-progress marker). */
  keepInBase: string[];
  /** RESTORE --delta: files ({@link fileKey}) already holding their final content, never written. */
  keep?: ReadonlySet<string>;
  /** RESTORE --delta: the kept files and the directories above them, never removed on the way. */
  protect?: ReadonlySet<string>;
}

/** Options of one {@link applyIncremental} call. */
export interface ApplyStep {
  /** The newest backup of the chain: only its WAL is kept (older links' pg_wal files are removed at the end anyway). */
  newest: boolean;
  /**
   * The link restored just before this one: its manifest gives every file's length so far, so a
   * block-level file without a changed block and with the same length is left alone (most of them:
   * on a remote target each patch costs a process there).
   */
  previous?: CatalogEntry;
}

/** Files the restore never takes from a backup: it makes the pg_tblspc links itself. */
const SKIPPED_BASE_FILES = new Set(['tablespace_map']);

/** Checks a file's size and checksum (before it is completed on the target). */
function verify(entry: IncrementalManifestEntry, bytes: number, digest: string | undefined, label: string): void {
  if (bytes !== entry.size)
    throw new BartError(
      `${label}: "${entry.path}" holds ${bytes} bytes, the manifest says ${entry.size} (damaged backup)`,
    );
  if (digest !== undefined && digest !== entry.checksum)
    throw new BartError(
      `${label}: checksum mismatch for "${entry.path}" (expected ${entry.checksum}, got ${digest}): the backup is damaged`,
    );
}

/** Applies one file of an incremental: a whole file replaces, a block-level one patches the file already restored. */
async function applyFile(
  entry: IncrementalManifestEntry,
  pieces: AsyncIterable<Buffer>,
  dest: string | undefined,
  opts: ApplyOptions,
  label: string,
): Promise<number> {
  const hash = entry.checksum && opts.checksumAlgorithm !== 'NONE' ? createChecksum(opts.checksumAlgorithm) : undefined;
  let bytes = 0;
  if (dest === undefined) {
    for await (const piece of pieces) {
      bytes += piece.length;
      hash?.update(piece);
    }
  } else if (!entry.incr) {
    const writer = await opts.target.openWriter(dest, entry.mode & 0o777, entry.size);
    try {
      for await (const piece of pieces) {
        bytes += piece.length;
        hash?.update(piece);
        await writer.write(piece);
      }
      verify(entry, bytes, hash?.digest('hex'), label);
      await writer.finish();
    } catch (err) {
      await writer.abort();
      throw err;
    }
    return bytes;
  } else {
    const incr = entry.incr;
    // Cut or extended to the recorded length (zeros, overwritten where blocks are stored), then patched.
    const patcher = await opts.target.openPatcher(dest, incr.length, entry.size);
    if (!patcher)
      throw new BartError(
        `${label}: "${entry.path}" is stored as changed blocks, but the parent backups did not restore it (inconsistent chain)`,
      );
    try {
      let run = 0;
      let inRun = 0;
      let blockCrc = 0;
      let blockFill = 0;
      let stored = 0;
      for await (const piece of pieces) {
        hash?.update(piece);
        let at = 0;
        while (at < piece.length) {
          const r = incr.runs[run];
          if (!r)
            throw new BartError(
              `${label}: "${entry.path}" holds more than its ${incr.runs.length} block runs (damaged backup)`,
            );
          const block = r[0] + inRun;
          const n = Math.min(piece.length - at, BLOCK_SIZE - blockFill);
          const part = piece.subarray(at, at + n);
          // Checked here, on the BART host, whatever the target: a block is written only once its CRC matched.
          blockCrc = crc32c(part, blockCrc);
          if (blockFill + n === BLOCK_SIZE) {
            const expected = incr.crcs.slice(stored * 8, stored * 8 + 8);
            const got = (blockCrc >>> 0).toString(16).padStart(8, '0');
            if (expected !== '' && expected !== got)
              throw new BartError(
                `${label}: block ${block} of "${entry.path}" has CRC ${got}, the manifest says ${expected} (damaged backup)`,
              );
          }
          await patcher.write(part, block * BLOCK_SIZE + blockFill);
          blockFill += n;
          at += n;
          if (blockFill === BLOCK_SIZE) {
            stored++;
            blockFill = 0;
            blockCrc = 0;
            inRun++;
            if (inRun === r[1]) {
              run++;
              inRun = 0;
            }
          }
        }
        bytes += piece.length;
      }
      if (blockFill !== 0)
        throw new BartError(`${label}: "${entry.path}" ends in the middle of a block (damaged backup)`);
      verify(entry, bytes, hash?.digest('hex'), label);
      await patcher.finish();
    } catch (err) {
      await patcher.abort();
      throw err;
    }
    return bytes;
  }
  verify(entry, bytes, hash?.digest('hex'), label);
  return bytes;
}

/**
 * Applies one incremental backup on top of what the previous backups of its chain restored:
 * directories created, whole files replaced, block-level files truncated or extended to their
 * recorded length and patched with the stored blocks (each block's CRC-32C and each file's checksum
 * verified). Archives (tablespaces) the newest backup does not have are skipped.
 */
export async function applyIncremental(
  entry: CatalogEntry,
  opts: ApplyOptions,
  step: ApplyStep = { newest: true },
): Promise<{ files: number; bytes: number; written: number }> {
  const info = entry.info;
  const label = `incremental backup ${info.id}`;
  const files = new Map<string, Map<string, IncrementalManifestEntry>>();
  const dirs: { path: string; mode: number }[] = [];
  const links: { path: string; linkTarget: string }[] = [];
  const previous = step.previous ? await readRestoredState(step.previous.storage, step.previous.dataKey) : undefined;
  // What the previous link restored as another type (a directory that became a symlink or a file, or
  // the reverse) is removed before this link writes: nothing is ever created or written through it.
  const typeChanged: string[] = [];
  let count = 0;
  let total = 0;
  // Bytes that reached the target (files read past are not counted).
  let written = 0;
  try {
    for await (const line of readManifest(entry.storage, joinKey(entry.dataKey, MANIFEST_FILE))) {
      if (line.kind !== 'file') continue;
      const e = line.entry as IncrementalManifestEntry;
      const root = opts.destinations.get(e.archive);
      if (root === undefined) continue;
      const key = fileKey(e.archive, e.path);
      const was = previous ? (previous.files.has(key) ? 'file' : previous.others.get(key)) : undefined;
      if (was !== undefined && was !== e.type) typeChanged.push(join(root, e.path));
      if (e.type === 'dir') {
        dirs.push({ path: join(root, e.path), mode: e.mode & 0o777 });
      } else if (e.type === 'symlink') {
        if (e.archive === 'base' && e.path.startsWith('pg_tblspc/')) continue;
        links.push({ path: join(root, e.path), linkTarget: e.linkTarget ?? '' });
      } else {
        let m = files.get(e.archive);
        if (!m) files.set(e.archive, (m = new Map()));
        m.set(e.path, e);
      }
    }
  } catch (err) {
    if (err instanceof BartError) throw err;
    throw new BartError(`${label} cannot be restored: ${errorMessage(err)}`);
  }
  // The target now holds what the previous link restored plus what older links left that it dropped;
  // removing those first makes `previous` describe the target exactly, so type changes are all seen.
  if (step.previous) await removeDropped(step.previous, opts);
  for (const path of typeChanged) await opts.target.remove(path);
  // Parents before children, whatever order the manifest lists them in.
  dirs.sort((a, b) => a.path.split('/').length - b.path.split('/').length);
  for (const d of dirs) await opts.target.makeDir(d.path, d.mode);
  for (const l of links) {
    await opts.target.remove(l.path);
    await opts.target.symlink(l.linkTarget, l.path);
  }
  // WAL of an intermediate link is neither needed nor kept: read past it unchecked (VERIFY-CHKSUM covers it).
  const passOver = (archive: string, e: IncrementalManifestEntry) =>
    !step.newest && archive === 'base' && e.path.startsWith('pg_wal/');
  const before = previous?.files;
  const destFor = (archive: string, e: IncrementalManifestEntry): string | undefined => {
    if (archive === 'base' && SKIPPED_BASE_FILES.has(e.path)) return undefined;
    if (passOver(archive, e)) return undefined;
    if (opts.keep?.has(fileKey(archive, e.path))) return undefined;
    if (e.incr && e.size === 0 && before?.get(fileKey(archive, e.path))?.length === e.incr.length) return undefined;
    const hold = archive === 'base' ? opts.holdBack[e.path] : undefined;
    return join(opts.destinations.get(archive)!, hold ?? e.path);
  };
  const ext = compressionExtension(info.compression);
  const opener = storageOpener(entry.storage);
  for (const [archive, entries] of files) {
    if (info.format === 'tar') {
      const artifact = objectRef(entry.storage, joinKey(entry.dataKey, tarName(archive, ext)));
      let raw;
      try {
        raw = await opener.open(artifact);
      } catch (err) {
        if (err instanceof ObjectMissingError)
          throw new BartError(`${label}: ${artifact.name} is missing (damaged backup)`);
        throw err;
      }
      const stream = decompressStream(raw, info.compression);
      const reader = new ByteReader(stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>);
      try {
        for (;;) {
          const header = await nextTarHeader(reader);
          if (!header) break;
          if (header.type !== 'file') {
            await reader.skip(header.size + tarPadding(header.size));
            continue;
          }
          const e = entries.get(header.path);
          if (!e)
            throw new BartError(
              `${label}: ${tarName(archive, ext)} holds "${header.path}", which its manifest does not list (damaged backup)`,
            );
          entries.delete(header.path);
          if (passOver(archive, e)) {
            await reader.skip(header.size + tarPadding(header.size));
          } else {
            const dest = destFor(archive, e);
            // A damaged file names the object it was read from.
            const n = await applyFile(e, reader.stream(header.size), dest, opts, `${label}: ${artifact.name}`);
            total += n;
            if (dest !== undefined) written += n;
            await reader.skip(tarPadding(header.size));
          }
          count++;
        }
      } catch (err) {
        // A decoding or read failure names the object it came from (a storage error already does).
        if (err instanceof BartError) throw err;
        const msg = errorMessage(err);
        throw new BartError(`${label}: ${msg.includes(artifact.name) ? msg : `${artifact.name}: ${msg}`}`);
      } finally {
        stream.destroy();
      }
      const missing = entries.keys().next();
      if (!missing.done)
        throw new BartError(
          `${label}: "${missing.value}" is listed in the manifest but not in ${tarName(archive, ext)} (damaged backup)`,
        );
    } else {
      const root = objectRef(entry.storage, joinKey(entry.dataKey, archive === 'base' ? PLAIN_BASE_DIR : archive));
      for (const e of entries.values()) {
        if (passOver(archive, e)) continue;
        // A delta restore's kept file: a plain backup need not even read it.
        if (opts.keep?.has(fileKey(archive, e.path))) continue;
        let stream;
        try {
          stream = await openPlainFile(opener, root, e.path, ext, info.compression, label);
        } catch (err) {
          throw new BartError(errorMessage(err));
        }
        try {
          const dest = destFor(archive, e);
          const n = await applyFile(e, stream as AsyncIterable<Buffer>, dest, opts, `${label}: ${root.name}`);
          total += n;
          if (dest !== undefined) written += n;
        } finally {
          stream.destroy();
        }
        count++;
      }
    }
  }
  // Everything of this link must be in place before the next one patches it (remote targets batch).
  await opts.target.flush();
  return { files: count, bytes: total, written };
}

/**
 * Removes from the restored directories everything the newest backup does not list: files and
 * directories of relations, databases and tablespaces dropped since the full backup, and the older
 * backups' WAL. Run after the last incremental is applied.
 */
export async function removeDropped(newest: CatalogEntry, opts: ApplyOptions): Promise<number> {
  const state = await readRestoredState(newest.storage, newest.dataKey);
  const heldBack = new Map(Object.entries(opts.holdBack).map(([k, v]) => [v, k]));
  let removed = 0;
  for (const [archive, root] of opts.destinations) {
    // Removing a directory removes its contents: what is listed below it is passed over.
    let removedDir: string | undefined;
    for await (const e of opts.target.walk(root)) {
      if (removedDir !== undefined && e.path.startsWith(removedDir)) continue;
      let path = e.path;
      if (archive === 'base') {
        if (opts.keepInBase.includes(path)) continue;
        if (path.startsWith('pg_tblspc/')) continue;
        path = heldBack.get(path) ?? path;
      }
      const key = fileKey(archive, path);
      // A delta restore's kept file, or a directory above one, is in the newest state: never removed.
      if (opts.protect?.has(key)) continue;
      const listed = e.type === 'file' ? state.files.has(key) : state.others.get(key) === e.type;
      if (listed) continue;
      await opts.target.remove(join(root, e.path));
      if (e.type === 'dir') removedDir = `${e.path}/`;
      removed++;
    }
  }
  log.debug(
    `restore of chain ending at ${newest.info.id}: removed ${removed} files and directories dropped since the full backup`,
  );
  return removed;
}
