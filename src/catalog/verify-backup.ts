// Backup verification: every checksum of a backup recomputed, manifest, artifacts and file contents.

import { pipeline } from 'node:stream/promises';
import { Transform, Writable } from 'node:stream';
import tar from 'tar-stream';
import { compressionExtension, createDecompressor, type CompressionMethod } from '../storage/compression.js';
import { StorageNotFoundError, joinKey } from '../storage/storage.js';
import { errorMessage } from '../util/errors.js';
import { forEachLimited } from '../util/for-each-limited.js';
import type { CatalogEntry } from './catalog.js';
import { MANIFEST_FILE, PLAIN_BASE_DIR } from './layout.js';
import {
  artifactHasher,
  createChecksum,
  readManifest,
  type ManifestArtifact,
  type ManifestFileEntry,
} from './manifest.js';

/** Outcome of verifying one backup: empty `failures` means every checksum matched. */
export interface VerifyResult {
  failures: string[];
  filesChecked: number;
}

/**
 * Feeds the output of `source` (through `transforms`, e.g. a decompressor) to `update`; returns the
 * byte count. One pipeline for the whole chain: a `.pipe()` would not forward a read error (a
 * missing or unreadable file) and the process would die of an unhandled 'error' event.
 */
async function hashStream(
  update: (d: Buffer) => void,
  source: NodeJS.ReadableStream,
  ...transforms: NodeJS.ReadWriteStream[]
): Promise<number> {
  let bytes = 0;
  await pipeline([
    source,
    ...transforms,
    new Writable({
      write(chunk: Buffer, _e, cb) {
        update(chunk);
        bytes += chunk.length;
        cb();
      },
    }),
  ]);
  return bytes;
}

/**
 * Files of a plain backup verified at once: hides an object store's per-request latency (radosgw here: 8 KiB
 * GETs 62 ms one at a time, 16 ms each 8 at once) while holding at most this many decoders in memory.
 */
const PLAIN_FILES_AT_ONCE = 8;

/** What went wrong reading a stored file, for a FAILED line: `missing` or the decoder's complaint. */
function unreadable(err: unknown): string {
  if (err instanceof StorageNotFoundError) return 'missing from the backup directory';
  return `cannot be read (${errorMessage(err)})`;
}

/**
 * Recomputes every checksum of a backup: the manifest's own hash, each stored artifact's checksum,
 * and each file's content checksum (tar entries decoded from the archive, plain files decompressed
 * one by one). Reports every file at fault, not just the first.
 */
export async function verifyBackup(entry: CatalogEntry): Promise<VerifyResult> {
  const failures: string[] = [];
  const files = new Map<string, ManifestFileEntry>();
  const artifacts: ManifestArtifact[] = [];
  try {
    for await (const line of readManifest(entry.storage, joinKey(entry.dataKey, MANIFEST_FILE))) {
      if (line.kind === 'artifact') artifacts.push(line.artifact);
      else if (line.entry.type === 'file') files.set(`${line.entry.archive}\0${line.entry.path}`, line.entry);
    }
  } catch (err) {
    return { failures: [`${MANIFEST_FILE}: ${(err as Error).message}`], filesChecked: 0 };
  }
  const algorithm = entry.info.checksumAlgorithm;
  const compression = entry.info.compression as CompressionMethod;
  let checked = 0;

  const checkFile = (key: string, label: string, digest: string | undefined, size: number) => {
    const expected = files.get(key);
    if (!expected) {
      failures.push(`${label}: not in the manifest`);
      return;
    }
    files.delete(key);
    checked++;
    if (size !== expected.size) failures.push(`${label}: size ${size}, expected ${expected.size}`);
    else if (digest !== undefined && expected.checksum !== undefined && digest !== expected.checksum)
      failures.push(`${label}: checksum mismatch`);
  };

  if (entry.info.format === 'tar') {
    for (const artifact of artifacts) {
      const key = joinKey(entry.dataKey, artifact.artifact);
      const archive = artifact.artifact.replace(/\.tar.*$/, '');
      try {
        // One read of the stored file: its checksum is computed on the way to the decompressor.
        const h = artifactHasher();
        let storedBytes = 0;
        const storedHash = new Transform({
          transform(chunk: Buffer, _e, cb) {
            h.update(chunk);
            storedBytes += chunk.length;
            cb(null, chunk);
          },
        });
        const extract = tar.extract();
        const done = (async () => {
          for await (const item of extract) {
            const name = item.header.name.replace(/\/$/, '');
            if (item.header.type !== 'file') {
              item.resume();
              continue;
            }
            const hash = createChecksum(algorithm);
            const size2 = await hashStream((d) => hash?.update(d), item as unknown as NodeJS.ReadableStream);
            checkFile(`${archive}\0${name}`, `${artifact.artifact}:${name}`, hash?.digest('hex'), size2);
          }
        })();
        // Wait for both: a truncated archive fails the pipeline and the entry loop alike, and a
        // rejection nobody awaits would end the process instead of failing this one backup.
        const [piped, consumed] = await Promise.allSettled([
          pipeline(await entry.storage.read(key), storedHash, createDecompressor(compression), extract),
          done,
        ]);
        if (storedBytes !== artifact.size || h.hex() !== artifact.checksum)
          failures.push(`${artifact.artifact}: stored file checksum mismatch`);
        if (piped.status === 'rejected') throw piped.reason;
        if (consumed.status === 'rejected') throw consumed.reason;
      } catch (err) {
        failures.push(`${artifact.artifact}: ${unreadable(err)}`);
      }
    }
  } else {
    const ext = compressionExtension(compression);
    // Several files read at once (an object store answers each GET after tens of ms); the outcomes are
    // reported in manifest order all the same.
    const list = [...files];
    const outcomes: (() => void)[] = [];
    await forEachLimited(
      list.map((item, index) => ({ item, index })),
      PLAIN_FILES_AT_ONCE,
      async ({ item: [key, expected], index }) => {
        const root = expected.archive === 'base' ? PLAIN_BASE_DIR : expected.archive;
        const stored = joinKey(root, expected.path) + ext;
        try {
          const hash = createChecksum(algorithm);
          const source = await entry.storage.read(joinKey(entry.dataKey, stored));
          const size = await hashStream((d) => hash?.update(d), source, createDecompressor(compression));
          const digest = hash?.digest('hex');
          outcomes[index] = () => checkFile(key, stored, digest, size);
        } catch (err) {
          outcomes[index] = () => {
            files.delete(key);
            failures.push(`${stored}: ${unreadable(err)}`);
          };
        }
      },
    );
    for (const outcome of outcomes) outcome();
  }
  for (const missing of files.values())
    failures.push(`${missing.archive === 'base' ? '' : missing.archive + ':'}${missing.path}: missing from the backup`);
  return { failures, filesChecked: checked };
}
