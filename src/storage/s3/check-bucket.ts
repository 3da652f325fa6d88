// Concept: CHECK-CONFIG's bucket check — an S3 repository reachable, its credentials valid, a test object written, read back and removed.

import { randomBytes } from 'node:crypto';
import { StorageError, StorageExistsError, joinKey, type RepositoryStorage } from '../storage.js';

/** Size of the test object: small, but more than one TCP segment. */
const PROBE_BYTES = 64 * 1024;

/**
 * Checks a repository (an S3 bucket; any driver works) end to end, as the first real command would use it: lists its root
 * (endpoint reachable, TLS trusted, credentials valid, bucket present), creates a test object if
 * absent, checks that a second create-if-absent is refused (WAL archiving relies on it), reads the
 * object back and compares it, and removes it. Returns a short success detail; throws a
 * {@link StorageError} whose one-line message says what is wrong.
 */
export async function checkBucket(storage: RepositoryStorage): Promise<string> {
  const key = `.pgbart-check-${process.pid}-${randomBytes(6).toString('hex')}`;
  const data = randomBytes(PROBE_BYTES);
  const object = joinKey(storage.location, key);
  // Reachable, trusted, authenticated, bucket present: the listing proves all four.
  for await (const page of storage.list('', { shallow: true })) {
    void page;
    break;
  }
  await storage.put(key, data, { ifAbsent: true });
  try {
    try {
      await storage.put(key, Buffer.from('second'), { ifAbsent: true });
      throw new StorageError(
        `the store of ${storage.location} ignores conditional writes (If-None-Match: *): a second create of ${object} replaced the first; pgbart's WAL archive needs a store that refuses it`,
        key,
      );
    } catch (err) {
      if (!(err instanceof StorageExistsError)) throw err;
    }
    const back = await storage.readAll(key, PROBE_BYTES * 2);
    if (!back.equals(data))
      throw new StorageError(
        `${object}: the test object read back differs from what was written (${back.length} of ${data.length} bytes): check the store (or a proxy in between)`,
        key,
      );
  } finally {
    await storage.remove(key);
  }
  if ((await storage.stat(key)) !== undefined)
    throw new StorageError(`${object}: the test object is still there after it was removed`, key);
  return `test object of ${PROBE_BYTES} bytes written, read back and removed`;
}
