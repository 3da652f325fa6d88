// Tests of the in-place AES-256-GCM addon (native/aes-gcm.c): built by `npm run build`, it must produce exactly the
// bytes node:crypto produces (the object format does not depend on which path sealed a chunk) and refuse what does
// not authenticate.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createCipheriv, randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { inPlaceGcm } from '../src/storage/encryption/native-gcm.js';
import {
  openChunkInPlace,
  sealChunkInPlace,
  TAG_BYTES,
  type ObjectHeader,
} from '../src/storage/encryption/cipher-format.js';

const SIZES = [0, 1, 15, 16, 17, 4095, 65_539, 1 << 20];

test('npm run build built the in-place AES-GCM addon and pgbart loads it', () => {
  assert.ok(inPlaceGcm(), 'native/build/aes-gcm.node missing or not loadable: scripts/install-deps.sh installs gcc');
});

test('the addon seals and opens exactly as node:crypto, and refuses altered data, tag, nonce or associated data', (t) => {
  if (!inPlaceGcm()) return t.skip('addon not built (the test above fails)');
  const gcm = inPlaceGcm()!;
  for (const size of SIZES) {
    const key = randomBytes(32);
    const nonce = randomBytes(12);
    const aad = randomBytes(1 + (size % 50));
    const plain = randomBytes(size);
    const cipher = createCipheriv('aes-256-gcm', key, nonce);
    cipher.setAAD(aad);
    const expected = Buffer.concat([cipher.update(plain), cipher.final()]);
    const data = Buffer.from(plain);
    const tag = Buffer.alloc(TAG_BYTES);
    gcm.seal(key, nonce, aad, data, tag);
    assert.ok(data.equals(expected), `ciphertext of ${size} bytes`);
    assert.ok(tag.equals(cipher.getAuthTag()), `tag of ${size} bytes`);

    const opened = Buffer.from(data);
    assert.equal(gcm.open(key, nonce, aad, opened, tag), true, `open ${size} bytes`);
    assert.ok(opened.equals(plain), `plaintext of ${size} bytes`);

    const flip = (b: Buffer, at: number): Buffer => {
      const c = Buffer.from(b);
      c[at] = c[at]! ^ 1;
      return c;
    };
    if (size > 0) assert.equal(gcm.open(key, nonce, aad, flip(data, size >> 1), tag), false, `flipped data ${size}`);
    assert.equal(gcm.open(key, nonce, aad, Buffer.from(data), flip(tag, 3)), false, `flipped tag ${size}`);
    assert.equal(gcm.open(key, flip(nonce, 11), aad, Buffer.from(data), tag), false, `other nonce ${size}`);
    assert.equal(gcm.open(key, nonce, flip(aad, 0), Buffer.from(data), tag), false, `other aad ${size}`);
  }
  const ok = [randomBytes(32), randomBytes(12), randomBytes(4), randomBytes(8), randomBytes(16)] as const;
  assert.throws(() => gcm.seal(randomBytes(16), ok[1], ok[2], ok[3], ok[4]), TypeError, 'a 16-byte key');
  assert.throws(() => gcm.seal(ok[0], ok[1], ok[2], ok[3], randomBytes(15)), TypeError, 'a 15-byte tag');
  assert.throws(() => gcm.open(ok[0], ok[1], ok[2], 'text' as unknown as Uint8Array, ok[4]), TypeError, 'a string');
});

test('a chunk sealed with the addon is the chunk node:crypto seals, and each opens the other', (t) => {
  if (!inPlaceGcm()) return t.skip('addon not built (the first test fails)');
  const header: ObjectHeader = { bytes: Buffer.alloc(32), chunkSize: 1 << 20, key: randomBytes(32) };
  const aad = randomBytes(40);
  const plain = randomBytes((1 << 20) + 5);
  const sealedHere = Buffer.from(plain);
  const tagHere = sealChunkInPlace(header, aad, 7, true, sealedHere);
  // The same call in a process that has the addon switched off (PGBART_NATIVE_GCM=off): node:crypto's path.
  const module = fileURLToPath(new URL('../src/storage/encryption/cipher-format.js', import.meta.url));
  const script = `
    import { sealChunkInPlace, openChunkInPlace } from ${JSON.stringify(module)};
    import { inPlaceGcm } from ${JSON.stringify(module.replace('cipher-format.js', 'native-gcm.js'))};
    let input = '';
    for await (const piece of process.stdin) input += piece;
    const [key, aad, plain, sealedHere, tagHere] = JSON.parse(input).map((h) => Buffer.from(h, 'hex'));
    const header = { bytes: Buffer.alloc(32), chunkSize: 1 << 20, key };
    const sealed = Buffer.from(plain);
    const tag = sealChunkInPlace(header, aad, 7, true, sealed);
    const opened = Buffer.concat([sealedHere, tagHere]);
    const ok = openChunkInPlace(header, aad, 7, true, opened);
    process.stdout.write(JSON.stringify({ native: inPlaceGcm() !== undefined, sealed: sealed.toString('hex'),
      tag: tag.toString('hex'), opened: ok && opened.subarray(0, plain.length).equals(plain) }));`;
  const out = JSON.parse(
    execFileSync(process.execPath, ['--input-type=module', '-e', script], {
      env: { ...process.env, PGBART_NATIVE_GCM: 'off' },
      input: JSON.stringify([header.key, aad, plain, sealedHere, tagHere].map((b) => b.toString('hex'))),
      maxBuffer: 16 << 20,
    }).toString(),
  ) as { native: boolean; sealed: string; tag: string; opened: boolean };
  assert.equal(out.native, false, 'PGBART_NATIVE_GCM=off leaves the addon out');
  assert.equal(out.sealed, sealedHere.toString('hex'), 'same ciphertext');
  assert.equal(out.tag, tagHere.toString('hex'), 'same tag');
  assert.equal(out.opened, true, 'node:crypto opens what the addon sealed');
  const theirs = Buffer.concat([Buffer.from(out.sealed, 'hex'), Buffer.from(out.tag, 'hex')]);
  assert.equal(openChunkInPlace(header, aad, 7, true, theirs), true, 'the addon opens what node:crypto sealed');
  assert.ok(theirs.subarray(0, plain.length).equals(plain));
  assert.equal(openChunkInPlace(header, aad, 6, true, Buffer.concat([sealedHere, tagHere])), false, 'another index');
});
