// Concept: the repository key — the passphrase, where it comes from, and the key object that makes a repository encrypted.
//
// An encrypted repository root holds one plain object, `pgbart.cipher` (JSON): the cipher, the KDF and its
// parameters, a random per-repository salt, the chunk size, and a check value (HMAC-SHA256 of a fixed text under
// the master key) that tells a wrong passphrase at once, before any long work. The master key is
// scrypt(passphrase, salt) — memory-hard, so a stolen bucket cannot be attacked at GPU speed.

import { createHash, createHmac, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { BartError, errorMessage } from '../../util/errors.js';
import { log } from '../../util/log.js';
import { StorageExistsError, StorageNotFoundError, joinKey, keyBaseName, type RepositoryStorage } from '../storage.js';
import { CIPHER_MAGIC, DEFAULT_CHUNK_LOG2 } from './cipher-format.js';

/** Name of the key object at the root of an encrypted repository. */
export const CIPHER_KEY_OBJECT = 'pgbart.cipher';
/** The most bytes a key object is read with (it is a small JSON object; anything larger is not one). */
const KEY_OBJECT_MAX_BYTES = 64 * 1024;
/** scrypt cost: N = 2^15, r = 8 → 32 MiB of memory per derivation, a fraction of a second. */
const SCRYPT = { N: 2 ** 15, r: 8, p: 1 } as const;
const CHECK_TEXT = 'pgbart repository key check v1';

/** How a server's repository is encrypted, from bart.cfg (the passphrase itself never is in bart.cfg). */
export interface CipherSettings {
  cipher: 'aes-256-gcm';
  /** Reads the passphrase (from repository_cipher_pass_file or BART_CIPHER_PASS) when it is first needed. */
  passphrase: () => Promise<string>;
  /** Chunk size (log2) of a repository created now; default 20 (1 MiB). Tests use small chunks. */
  chunkLog2?: number;
  /**
   * The driver of the server's other root (catalog ↔ WAL archive), opened on demand and closed after use. An empty
   * root that is being made encrypted copies the other root's key object when this passphrase opens it: both roots
   * then have one salt, so a command that opens both derives the master key once (the cache above).
   */
  sibling?: () => RepositoryStorage;
}

/** An opened repository key. */
export interface RepositoryKey {
  master: Buffer;
  chunkLog2: number;
  chunkSize: number;
}

/** The stored key object. */
interface KeyObject {
  format: 1;
  cipher: 'aes-256-gcm';
  kdf: { name: 'scrypt'; N: number; r: number; p: number };
  salt: string;
  chunkLog2: number;
  check: string;
}

/**
 * Master keys derived in this process, by a digest of (KDF parameters, salt, passphrase). A command opens the
 * catalog root and the WAL archive root, often more than once (CipherStorage per call site), and scrypt costs a
 * quarter to half a second of a core each time. Keyed by the passphrase's digest too, so a wrong passphrase never
 * finds a right one's key: it derives its own, and the check value refuses it (openRepositoryKey always compares).
 */
const derivedKeys = new Map<string, Promise<Buffer>>();
/** A process uses one or two passphrases; the bound only keeps a long-lived process (tests) from growing. */
const DERIVED_KEYS_MAX = 16;
let derivations = 0;

/** How many scrypt derivations this process ran (tests: the cache works). */
export function keyDerivationCount(): number {
  return derivations;
}

function derive(passphrase: string, salt: Buffer, kdf: KeyObject['kdf']): Promise<Buffer> {
  const id = createHash('sha256')
    .update(JSON.stringify([kdf.name, kdf.N, kdf.r, kdf.p, salt.toString('base64'), passphrase]))
    .digest('base64');
  const cached = derivedKeys.get(id);
  if (cached) return cached;
  derivations++;
  const started = Date.now();
  const derived = new Promise<Buffer>((resolve, reject) =>
    scrypt(passphrase, salt, 32, { N: kdf.N, r: kdf.r, p: kdf.p, maxmem: 256 * kdf.N * kdf.r * 2 }, (err, key) => {
      if (err) return reject(err);
      log.debug(`derived a repository master key (scrypt N=${kdf.N} r=${kdf.r}) in ${Date.now() - started} ms`);
      resolve(key);
    }),
  );
  if (derivedKeys.size >= DERIVED_KEYS_MAX) derivedKeys.delete(derivedKeys.keys().next().value!);
  derivedKeys.set(id, derived);
  // A failed derivation is not remembered: the next attempt tries again.
  derived.catch(() => derivedKeys.delete(id));
  return derived;
}

function checkValue(master: Buffer): Buffer {
  return createHmac('sha256', master).update(CHECK_TEXT).digest();
}

/** Parses and checks a key object read from the repository (not trusted: bounded numbers only). */
function parseKeyObject(text: string, where: string): KeyObject {
  let o: Partial<KeyObject>;
  try {
    o = JSON.parse(text) as Partial<KeyObject>;
  } catch {
    throw new BartError(`${where} is damaged (not JSON); the repository key cannot be opened`);
  }
  const kdf = o.kdf;
  const ok =
    o.format === 1 &&
    o.cipher === 'aes-256-gcm' &&
    kdf?.name === 'scrypt' &&
    [2 ** 14, 2 ** 15, 2 ** 16, 2 ** 17, 2 ** 18].includes(kdf.N) &&
    kdf.r >= 1 &&
    kdf.r <= 32 &&
    kdf.p >= 1 &&
    kdf.p <= 4 &&
    typeof o.salt === 'string' &&
    Buffer.from(o.salt, 'base64').length === 16 &&
    Number.isInteger(o.chunkLog2) &&
    o.chunkLog2! >= 12 &&
    o.chunkLog2! <= 24 &&
    typeof o.check === 'string' &&
    Buffer.from(o.check, 'base64').length === 32;
  if (!ok) throw new BartError(`${where} is damaged or of an unknown format; the repository key cannot be opened`);
  return o as KeyObject;
}

/**
 * The first object of the storage that is not encrypted, if any: such a repository cannot become encrypted. Key
 * objects of nested roots (the WAL archive below a server's catalog) and the BART host's lock files (which live
 * in a POSIX catalog directory, catalog/lock.ts) are not repository data.
 */
async function firstUnencryptedObject(storage: RepositoryStorage): Promise<string | undefined> {
  for await (const page of storage.list('')) {
    for (const o of page.objects) {
      if (keyBaseName(o.key) === CIPHER_KEY_OBJECT || /^[^/]+\.lock$/.test(o.key)) continue;
      if (o.size < CIPHER_MAGIC.length) return o.key;
      const head = await storage.read(o.key, { start: 0, end: CIPHER_MAGIC.length });
      const parts: Buffer[] = [];
      for await (const part of head) parts.push(part as Buffer);
      if (!Buffer.concat(parts).equals(CIPHER_MAGIC)) return o.key;
    }
  }
  return undefined;
}

/**
 * Opens the key of an encrypted repository: reads `pgbart.cipher`, derives the master key from the
 * passphrase and compares the check value (a wrong passphrase fails here, naming the repository). An
 * empty repository gets a new key object; one that holds unencrypted objects is refused (a repository is
 * never half encrypted).
 */
export async function openRepositoryKey(storage: RepositoryStorage, settings: CipherSettings): Promise<RepositoryKey> {
  const where = joinKey(storage.location, CIPHER_KEY_OBJECT);
  let text: string | undefined;
  try {
    text = (await storage.readAll(CIPHER_KEY_OBJECT, KEY_OBJECT_MAX_BYTES)).toString('utf8');
  } catch (err) {
    if (!(err instanceof StorageNotFoundError)) throw err;
  }
  const passphrase = await settings.passphrase();
  if (text === undefined) {
    const plain = await firstUnencryptedObject(storage);
    if (plain !== undefined)
      throw new BartError(
        `repository ${storage.location} holds unencrypted data (${plain}), so repository_cipher = ${settings.cipher} ` +
          'cannot apply to it: point the server at a new, empty repository (backup_path/archive_path or s3_prefix), ' +
          'or set repository_cipher = none',
      );
    const shared = await siblingKey(settings, passphrase);
    let created: KeyObject;
    let master: Buffer;
    if (shared) {
      ({ key: created, master } = shared);
    } else {
      const salt = randomBytes(16);
      const kdf = { name: 'scrypt' as const, ...SCRYPT };
      master = await derive(passphrase, salt, kdf);
      created = {
        format: 1,
        cipher: settings.cipher,
        kdf,
        salt: salt.toString('base64'),
        chunkLog2: settings.chunkLog2 ?? DEFAULT_CHUNK_LOG2,
        check: checkValue(master).toString('base64'),
      };
    }
    try {
      await storage.put(CIPHER_KEY_OBJECT, Buffer.from(JSON.stringify(created) + '\n'), { ifAbsent: true });
    } catch (err) {
      // Another process created the key at the same moment: use theirs.
      if (err instanceof StorageExistsError) return openRepositoryKey(storage, settings);
      throw err;
    }
    return { master, chunkLog2: created.chunkLog2, chunkSize: 2 ** created.chunkLog2 };
  }
  const key = parseKeyObject(text, where);
  let master: Buffer;
  try {
    master = await derive(passphrase, Buffer.from(key.salt, 'base64'), key.kdf);
  } catch (err) {
    throw new BartError(`cannot derive the key of repository ${storage.location}: ${errorMessage(err)}`);
  }
  if (!timingSafeEqual(checkValue(master), Buffer.from(key.check, 'base64')))
    throw new BartError(
      `wrong passphrase for the encrypted repository ${storage.location} (check repository_cipher_pass_file or BART_CIPHER_PASS)`,
    );
  return { master, chunkLog2: key.chunkLog2, chunkSize: 2 ** key.chunkLog2 };
}

/**
 * The key object of the server's other root and its master key, when that root is encrypted and this passphrase
 * opens it; else undefined (a new salt then). Sharing is safe: the passphrase is the same either way, every object
 * still has its own random salt and key (HKDF), and its name is bound in its associated data.
 */
async function siblingKey(
  settings: CipherSettings,
  passphrase: string,
): Promise<{ key: KeyObject; master: Buffer } | undefined> {
  if (!settings.sibling) return undefined;
  const sibling = settings.sibling();
  try {
    const text = (await sibling.readAll(CIPHER_KEY_OBJECT, KEY_OBJECT_MAX_BYTES)).toString('utf8');
    const key = parseKeyObject(text, joinKey(sibling.location, CIPHER_KEY_OBJECT));
    if (key.cipher !== settings.cipher) return undefined;
    const master = await derive(passphrase, Buffer.from(key.salt, 'base64'), key.kdf);
    if (!timingSafeEqual(checkValue(master), Buffer.from(key.check, 'base64'))) return undefined;
    return { key, master };
  } catch {
    // No key there, or one this passphrase does not open, or not readable now: this root gets its own salt.
    return undefined;
  } finally {
    await sibling.close().catch(() => undefined);
  }
}

/**
 * Reads the key object of `storage` (the driver, below any cipher) and starts deriving its master key, so that
 * scrypt (a tenth of a second or more of one core, on Node's thread pool) runs while the command still loads its
 * modules; {@link openRepositoryKey} then finds the derivation under way or done (the cache is keyed by parameters,
 * salt and passphrase). Resolves once the derivation has started, without waiting for it. Never fails and never
 * decides anything: a missing or damaged key object, an unreadable passphrase or a wrong one is reported by
 * openRepositoryKey, which always checks.
 */
export async function startKeyDerivation(
  storage: RepositoryStorage,
  passphrase: CipherSettings['passphrase'],
): Promise<void> {
  try {
    const [stored, phrase] = await Promise.all([
      storage.readAll(CIPHER_KEY_OBJECT, KEY_OBJECT_MAX_BYTES),
      passphrase(),
    ]);
    const key = parseKeyObject(stored.toString('utf8'), CIPHER_KEY_OBJECT);
    derive(phrase, Buffer.from(key.salt, 'base64'), key.kdf).catch(() => undefined);
  } catch {
    // Reported by openRepositoryKey.
  }
}

/** Whether a repository root is encrypted (holds a key object), without a passphrase: SHOW-SERVERS, CHECK-CONFIG. */
export async function repositoryIsEncrypted(storage: RepositoryStorage): Promise<boolean> {
  return (await storage.stat(CIPHER_KEY_OBJECT)) !== undefined;
}
