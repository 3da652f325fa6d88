// Manifest: a backup's manifest.jsonl, one JSON line per file and artifact, hashed, streamed in and out.

import { createHash } from 'node:crypto';
import { createInterface } from 'node:readline';
import type { ChecksumAlgorithm } from './backup-info.js';
import { createFileHash, Xxh64, type FileHash, type FileHashName } from '../util/file-hash.js';
import { relativePathProblem } from '../util/untrusted-path.js';
import { BLOCK_SIZE } from '../postgres/constants.js';
import { joinKey, type RepositoryStorage, type StorageWriter } from '../storage/storage.js';

/**
 * The machine-readable manifest of a backup, `manifest.jsonl`: one JSON object per line, so it is
 * written and read as a stream however many files a cluster has.
 *
 *   {"h": ManifestHeader}             first line
 *   {"f": ManifestFileEntry}          one per file, directory and symlink of the backup
 *   {"a": ManifestArtifact}           one per stored artifact (tar file), with its own checksum
 *   {"i": object}                     the final backupinfo fields (without status), so that a lost or
 *                                     damaged backupinfo can be rebuilt exactly (INIT -r), name included
 *   {"end": {"entries": N, "sha256": hex}}   last line: count and SHA-256 of every line before it
 *
 * A manifest without its end line, or whose hash does not match, is damaged: the backup is not
 * trusted.
 */
export interface ManifestHeader {
  manifest: 'pgbart';
  version: 1;
  server: string;
  id: string;
  format: 'tar' | 'plain';
  compression: string;
  checksumAlgorithm: ChecksumAlgorithm;
  parent?: string;
}

/** One entry of the backed-up data directory or of a tablespace. */
export interface ManifestFileEntry {
  /** Path relative to the data directory (archive `base`) or the tablespace location (archive = OID). */
  path: string;
  /** `base` or the tablespace OID. */
  archive: string;
  type: 'file' | 'dir' | 'symlink';
  /** Bytes of content (what the restored file holds). */
  size: number;
  mode: number;
  /** Modification time, epoch seconds. */
  mtime: number;
  /** Hex checksum of the content; absent for directories and with algorithm NONE. */
  checksum?: string;
  /** Tar: byte offset in the stored (compressed) artifact where this entry's tar header starts. */
  offset?: number;
  /** Tar: uncompressed bytes to skip inside the unit at `offset` before this entry's header (0 when absent). */
  unitSkip?: number;
  /** Tar: stored bytes from `offset` holding the entry; plain: size of the stored (compressed) file. */
  storedSize?: number;
  linkTarget?: string;
}

/** A stored artifact (`base.tar.gz`, `16385.tar`) and the checksum of its stored bytes. */
export interface ManifestArtifact {
  artifact: string;
  size: number;
  checksum: string;
}

/** The file-hash name of a checksum algorithm; undefined for NONE. */
export function hashName(alg: ChecksumAlgorithm): FileHashName | undefined {
  return alg === 'CRC32C' ? 'crc32c' : alg === 'SHA256' ? 'sha256' : alg === 'MD5' ? 'md5' : undefined;
}

/** The checksum of stored artifacts (backup writers, VERIFY-CHKSUM): xxh64, fast enough to never slow a backup down. */
export function artifactHasher(): { update(d: Uint8Array): void; hex(): string } {
  const h = new Xxh64(0n);
  return {
    update: (d) => {
      h.update(d);
    },
    hex: () => 'xxh64:' + h.digest().toString(16).padStart(16, '0'),
  };
}

/** A new hash for an algorithm, or undefined for NONE. */
export function createChecksum(alg: ChecksumAlgorithm): FileHash | undefined {
  const name = hashName(alg);
  return name ? createFileHash(name) : undefined;
}

/** Writes manifest.jsonl line by line; `finish()` appends the end line and fsyncs. */
export class ManifestWriter {
  private readonly hash = createHash('sha256');
  private entries = 0;
  private buffered: string[] = [];

  private constructor(private readonly output: StorageWriter) {}

  /** Starts writing the manifest `key` of `storage`; it becomes visible only when {@link finish} completes it. */
  static async create(storage: RepositoryStorage, key: string, header: ManifestHeader): Promise<ManifestWriter> {
    const writer = new ManifestWriter(await storage.create(key));
    writer.push({ h: header });
    return writer;
  }

  private push(obj: unknown): void {
    const line = JSON.stringify(obj) + '\n';
    this.hash.update(line);
    this.buffered.push(line);
  }

  /** Adds a file entry (buffered; flushed in batches). */
  async addFile(entry: ManifestFileEntry): Promise<void> {
    this.entries++;
    this.push({ f: entry });
    if (this.buffered.length >= 512) await this.flush();
  }

  /** Adds an artifact entry. */
  async addArtifact(artifact: ManifestArtifact): Promise<void> {
    this.push({ a: artifact });
    await this.flush();
  }

  private async flush(): Promise<void> {
    if (this.buffered.length === 0) return;
    const text = this.buffered.join('');
    this.buffered = [];
    await this.output.write(Buffer.from(text));
  }

  /** Records the backup's final details (see {@link readManifestInfo}). */
  async addInfo(info: Record<string, unknown>): Promise<void> {
    this.push({ i: info });
    await this.flush();
  }

  /** Writes the end line and completes the object (durably). */
  async finish(): Promise<void> {
    const digest = this.hash.digest('hex');
    this.buffered.push(JSON.stringify({ end: { entries: this.entries, sha256: digest } }) + '\n');
    await this.flush();
    await this.output.finish();
  }

  /** Drops the manifest without finishing it (the backup failed). */
  async abandon(): Promise<void> {
    await this.output.abort();
  }
}

const isCount = (n: unknown): boolean => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;

/**
 * Why a manifest entry cannot be used, or undefined: manifests are read back from the repository and
 * are not trusted, so every field that decides where bytes go or how many is checked before use.
 */
export function manifestEntryProblem(f: ManifestFileEntry): string | undefined {
  if (typeof f !== 'object' || f === null) return 'an entry is not an object';
  const pathProblem = relativePathProblem(f.path);
  if (pathProblem) return `entry path ${JSON.stringify(String(f.path)).slice(0, 200)} ${pathProblem}`;
  if (typeof f.archive !== 'string' || !/^(base|[1-9]\d{0,9})$/.test(f.archive))
    return `"${f.path}" has a bad archive name`;
  if (f.type !== 'file' && f.type !== 'dir' && f.type !== 'symlink') return `"${f.path}" has an unknown type`;
  if (!isCount(f.size) || !isCount(f.mode) || f.mode > 0o7777) return `"${f.path}" has a bad size or mode`;
  for (const n of [f.offset, f.unitSkip, f.storedSize])
    if (n !== undefined && !isCount(n)) return `"${f.path}" has a bad offset or stored size`;
  if (f.checksum !== undefined && (typeof f.checksum !== 'string' || !/^[0-9a-f]*$/.test(f.checksum)))
    return `"${f.path}" has a bad checksum`;
  const incr = (f as { incr?: unknown }).incr;
  if (incr !== undefined) {
    const problem = blockListProblem(incr);
    if (problem) return `"${f.path}" has a damaged block list: ${problem}`;
  }
  if (f.type === 'symlink' && (typeof f.linkTarget !== 'string' || /[\u0000-\u001f\u007f]/.test(f.linkTarget))) {
    return `symlink "${f.path}" has a bad target`;
  }
  return undefined;
}

/**
 * Why an incremental entry's block list (`incr`: restored length, runs of stored blocks, their CRCs)
 * cannot be used: every stored block must lie inside the restored length, runs ascending, one CRC each.
 */
function blockListProblem(incr: unknown): string | undefined {
  const i = incr as { length?: unknown; runs?: unknown; crcs?: unknown };
  if (
    typeof i !== 'object' ||
    i === null ||
    !isCount(i.length) ||
    !Array.isArray(i.runs) ||
    typeof i.crcs !== 'string'
  ) {
    return 'not a length, runs and CRCs';
  }
  let next = 0;
  let blocks = 0;
  for (const run of i.runs as unknown[]) {
    if (!Array.isArray(run) || run.length !== 2 || !isCount(run[0]) || !isCount(run[1]) || run[1] === 0)
      return 'a bad run';
    const [first, count] = run as [number, number];
    if (first < next) return 'runs not ascending';
    next = first + count;
    if ((next - 1) * BLOCK_SIZE >= (i.length as number)) return `block ${next - 1} starts past the restored length`;
    blocks += count;
  }
  if (i.crcs !== '' && (i.crcs.length !== blocks * 8 || !/^[0-9a-f]*$/.test(i.crcs)))
    return 'CRCs do not match the runs';
  return undefined;
}

/** What a manifest line holds. */
export type ManifestLine =
  { kind: 'file'; entry: ManifestFileEntry } | { kind: 'artifact'; artifact: ManifestArtifact };

/**
 * Streams a manifest: the header first (via `onHeader`), then every entry. Throws when the end
 * line is missing or the content hash does not match (a damaged or truncated manifest).
 */
export async function* readManifest(
  storage: RepositoryStorage,
  key: string,
  onHeader?: (h: ManifestHeader) => void,
  onInfo?: (info: Record<string, unknown>) => void,
): AsyncGenerator<ManifestLine> {
  const path = joinKey(storage.location, key);
  const hash = createHash('sha256');
  const input = (await storage.read(key)).setEncoding('utf8');
  const rl = createInterface({ input, crlfDelay: Infinity });
  let lineNo = 0;
  let ended = false;
  let entries = 0;
  for await (const line of rl) {
    lineNo++;
    if (ended) throw new Error(`${path}:${lineNo}: data after the end line`);
    let obj: {
      h?: ManifestHeader;
      f?: ManifestFileEntry;
      a?: ManifestArtifact;
      i?: unknown;
      end?: { entries: number; sha256: string };
    };
    try {
      obj = JSON.parse(line) as typeof obj;
    } catch {
      throw new Error(`${path}:${lineNo}: not valid JSON`);
    }
    if (obj.end) {
      const digest = hash.digest('hex');
      if (obj.end.sha256 !== digest || obj.end.entries !== entries)
        throw new Error(`${path}: manifest checksum mismatch (damaged manifest)`);
      ended = true;
      continue;
    }
    hash.update(line + '\n');
    if (obj.h) {
      if (lineNo !== 1 || obj.h.manifest !== 'pgbart') throw new Error(`${path}:${lineNo}: unexpected header`);
      onHeader?.(obj.h);
    } else if (obj.f) {
      entries++;
      const problem = manifestEntryProblem(obj.f);
      if (problem) throw new Error(`${path}:${lineNo}: ${problem} (damaged manifest)`);
      yield { kind: 'file', entry: obj.f };
    } else if (obj.a) {
      yield { kind: 'artifact', artifact: obj.a };
    } else if (obj.i) {
      onInfo?.(obj.i as Record<string, unknown>);
    } else {
      throw new Error(`${path}:${lineNo}: unknown manifest line`);
    }
  }
  if (!ended) throw new Error(`${path}: manifest is incomplete (no end line)`);
}

/** Reads only a manifest's header. */
export async function readManifestHeader(storage: RepositoryStorage, key: string): Promise<ManifestHeader> {
  const path = joinKey(storage.location, key);
  let header: ManifestHeader | undefined;
  const input = await storage.read(key);
  const rl = createInterface({ input: input.setEncoding('utf8'), crlfDelay: Infinity });
  for await (const line of rl) {
    header = (JSON.parse(line) as { h: ManifestHeader }).h;
    break;
  }
  rl.close();
  input.destroy();
  if (!header) throw new Error(`${path}: empty manifest`);
  return header;
}

/**
 * The backup details recorded in a complete manifest (verified by the manifest's own hash), or
 * undefined for a manifest written before they were recorded.
 */
export async function readManifestInfo(
  storage: RepositoryStorage,
  key: string,
): Promise<Record<string, unknown> | undefined> {
  let info: Record<string, unknown> | undefined;
  for await (const _line of readManifest(storage, key, undefined, (i) => (info = i))) {
    // every line must be read: the hash is only checked at the end
  }
  return info;
}
