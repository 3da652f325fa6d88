// File checksums: CRC-32C in PostgreSQL's backup-manifest form, fed in any pieces.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { crc32c } from '@node-rs/crc32';
import { crc32cPart, createFileHash } from '../src/util/file-hash.js';

const crc = (data: Buffer) => crc32cPart(createFileHash('crc32c').update(data).digest('hex'));

test('crc32c: the standard check value, as the little-endian hex pg_basebackup and pg_verifybackup use', () => {
  // CRC-32C("123456789") = 0xE3069283; PostgreSQL's manifest writes the integer's bytes as they lie in memory.
  assert.equal(crc(Buffer.from('123456789')), '839206e3');
  // The value pg_basebackup --manifest-checksums=CRC32C recorded for a PG_VERSION file holding "15\n".
  assert.equal(crc(Buffer.from('15\n')), '8a744722');
  // XXH64 (seed 0) of the empty input is ef46db3751d8e999.
  assert.equal(createFileHash('crc32c').digest('hex'), '00000000' + 'ef46db3751d8e999', 'empty file');
});

test('crc32c: files that end with their own CRC-32C (pg_control, pg_filenode.map) still differ', () => {
  // A CRC is linear: content + its CRC-32C (little-endian) + zeros has one CRC-32C whatever the content.
  const selfChecked = (content: string) => {
    const file = Buffer.alloc(8192);
    file.write(content);
    file.writeUInt32LE(crc32c(file.subarray(0, 296)) >>> 0, 296);
    return file;
  };
  const [a, b] = [selfChecked('checkpoint at 0/3000028'), selfChecked('checkpoint at 0/5000060')];
  assert.equal(crc(a), crc(b), 'the CRC-32C part alone cannot tell them apart');
  assert.notEqual(createFileHash('crc32c').update(a).digest('hex'), createFileHash('crc32c').update(b).digest('hex'));
});

test('crc32c: pieces of any size and views into larger memory give the whole-buffer digest', () => {
  const data = Buffer.alloc(3 * 1024 * 1024 + 17);
  for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
  const whole = createFileHash('crc32c').update(data).digest('hex');
  const pieces = createFileHash('crc32c');
  for (let at = 0, step = 1; at < data.length; at += step, step = (step * 7 + 3) % 1_000_003)
    pieces.update(new Uint8Array(data.buffer, data.byteOffset + at, Math.min(step, data.length - at)));
  assert.equal(pieces.digest('hex'), whole);
  const flipped = Buffer.from(data);
  flipped[123_456]! ^= 1;
  assert.notEqual(createFileHash('crc32c').update(flipped).digest('hex'), whole, 'one flipped bit changes it');
});

test('sha256 and md5 are the usual digests', () => {
  const data = Buffer.from('pgbart');
  assert.equal(createFileHash('sha256').update(data).digest('hex'), createHash('sha256').update(data).digest('hex'));
  assert.equal(createFileHash('md5').update(data).digest('hex'), createHash('md5').update(data).digest('hex'));
});
