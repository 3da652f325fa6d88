import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { closeSync, createReadStream, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { LocalRestoreTarget } from '../src/hosts/local/restore-target.js';
import type { FileCopyResult } from '../src/storage/file-copy-worker.js';
import { PosixStorage } from '../src/storage/posix/posix-storage.js';
import { WorkerPool } from '../src/util/worker-pool.js';
import { FLUSH_EVERY_BYTES, FlushBehind } from '../src/util/flush-behind.js';
import { makeTempDir, removeTree } from './harness/os.js';

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Writes 2.5 flush intervals of distinct 1 MiB chunks through `write`; returns the expected SHA-256. */
async function writeChunks(write: (chunk: Buffer) => Promise<void>): Promise<string> {
  const hash = createHash('sha256');
  const chunks = Math.ceil((FLUSH_EVERY_BYTES * 2.5) / 2 ** 20);
  for (let i = 0; i < chunks; i++) {
    const chunk = Buffer.alloc(2 ** 20, i % 251);
    chunk.writeUInt32LE(i, 0);
    hash.update(chunk);
    await write(chunk);
  }
  return hash.digest('hex');
}

test('write-behind flushes lose nothing: repository outputs and restore files written past several flush points read back whole', async () => {
  const dir = makeTempDir('flush');
  try {
    const repoPath = join(dir, 'archive.tar');
    const out = await new PosixStorage(dir).create('archive.tar');
    const expected = await writeChunks((c) => out.write(c));
    await out.finish();
    assert.equal(await sha256File(repoPath), expected);

    const restorePath = join(dir, 'restored');
    const writer = await new LocalRestoreTarget().openWriter(restorePath, 0o600);
    const expected2 = await writeChunks((c) => writer.write(c));
    await writer.finish();
    assert.equal(await sha256File(restorePath), expected2);

    // A plain backup's copy worker, copying the file just written (the flush points fall mid-file).
    const pool = new WorkerPool<FileCopyResult>(new URL('../src/storage/file-copy-worker.js', import.meta.url), 1);
    // Pool workers are unref'd (a backup's database session keeps the process alive): hold it here.
    const keepAlive = setInterval(() => undefined, 1000);
    try {
      const copied = join(dir, 'copied');
      const size = Math.ceil((FLUSH_EVERY_BYTES * 2.5) / 2 ** 20) * 2 ** 20;
      const result = await pool.run({
        source: restorePath,
        target: copied,
        size,
        method: 'none',
        level: 0,
        hash: 'sha256',
        chunk: 4 * 2 ** 20,
      });
      assert.equal(result.checksum, expected2);
      assert.equal(result.storedSize, size);
      assert.equal(await sha256File(copied), expected2);
    } finally {
      clearInterval(keepAlive);
      await pool.close();
    }

    // An abort while a flush may be under way closes cleanly.
    const aborted = await new PosixStorage(dir).create('aborted');
    for (let i = 0; i < FLUSH_EVERY_BYTES / 2 ** 20 + 1; i++) await aborted.write(Buffer.alloc(2 ** 20, 1));
    await aborted.abort();
  } finally {
    removeTree(dir);
  }
});

test('flush behind never holds a writer up: wrote() returns at once, also while a flush is under way', async () => {
  const dir = makeTempDir('flush-nowait');
  const fd = openSync(join(dir, 'file'), 'w');
  try {
    const flush = new FlushBehind(fd);
    // Writes stall behind a running fdatasync of their file on ext4; waiting for one before the next made
    // backups slower, so a due flush starts in the background and the writer goes on.
    for (let i = 0; i < 3; i++) {
      writeSync(fd, Buffer.alloc(2 ** 20, i));
      assert.equal(flush.wrote(FLUSH_EVERY_BYTES), undefined);
    }
    await flush.drain();
  } finally {
    closeSync(fd);
    removeTree(dir);
  }
});

test('a background flush that fails is reported by drain (the final fsync of the descriptor would not see it)', async () => {
  // fdatasync of /dev/null fails (EINVAL): the stand-in for a writeback error (EIO) of a real file.
  const fd = openSync('/dev/null', 'w');
  try {
    const flush = new FlushBehind(fd);
    flush.wrote(FLUSH_EVERY_BYTES);
    await assert.rejects(flush.drain(), /EINVAL/);
  } finally {
    closeSync(fd);
  }
});
