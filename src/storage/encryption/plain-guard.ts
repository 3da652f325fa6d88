// Concept: the unencrypted repository guard — a server configured without a cipher never reads or writes an encrypted repository.

import type { Readable } from 'node:stream';
import { BartError } from '../../util/errors.js';
import type {
  CreateOptions,
  ListOptions,
  ListPage,
  ReadRange,
  RepositoryStorage,
  StorageWriter,
  StoredObject,
} from '../storage.js';
import { CIPHER_KEY_OBJECT } from './cipher-key.js';

/**
 * Passes every call to the inner storage once it has checked, on the first call, that the repository holds no
 * key object: with `repository_cipher = none` pgbart would otherwise read encrypted backupinfo as damage and
 * write unencrypted WAL into an encrypted repository (half encrypted). localPath is passed through unchecked:
 * it is only used after a catalog operation has run the check.
 */
export class PlainRepositoryGuard implements RepositoryStorage {
  readonly kind: 'posix' | 's3';
  readonly location: string;
  renamePrefix?: (from: string, to: string) => Promise<void>;
  private checked: Promise<void> | undefined;

  constructor(private readonly inner: RepositoryStorage) {
    this.kind = inner.kind;
    this.location = inner.location;
    if (inner.renamePrefix) this.renamePrefix = async (from, to) => (await this.check(), inner.renamePrefix!(from, to));
  }

  /** The one check (cached): refuses an encrypted repository, naming it and what to set. */
  check(): Promise<void> {
    this.checked ??= (async () => {
      if ((await this.inner.stat(CIPHER_KEY_OBJECT)) !== undefined)
        throw new BartError(
          `repository ${this.location} is encrypted, but repository_cipher is none for this server: set repository_cipher = aes-256-gcm and its passphrase (repository_cipher_pass_file or BART_CIPHER_PASS)`,
        );
    })();
    return this.checked;
  }

  async *list(prefix: string, options?: ListOptions): AsyncIterable<ListPage> {
    await this.check();
    yield* this.inner.list(prefix, options);
  }
  async stat(key: string): Promise<StoredObject | undefined> {
    await this.check();
    return this.inner.stat(key);
  }
  async read(key: string, range?: ReadRange): Promise<Readable> {
    await this.check();
    return this.inner.read(key, range);
  }
  async readAll(key: string, maxBytes: number): Promise<Buffer> {
    await this.check();
    return this.inner.readAll(key, maxBytes);
  }
  async create(key: string, options?: CreateOptions): Promise<StorageWriter> {
    await this.check();
    return this.inner.create(key, options);
  }
  async put(key: string, data: Uint8Array, options?: CreateOptions): Promise<void> {
    await this.check();
    return this.inner.put(key, data, options);
  }
  async remove(key: string): Promise<void> {
    await this.check();
    return this.inner.remove(key);
  }
  async removePrefix(prefix: string): Promise<void> {
    await this.check();
    return this.inner.removePrefix(prefix);
  }
  syncPrefix(prefix: string): Promise<void> {
    return this.inner.syncPrefix(prefix);
  }
  localPath(key: string): string | undefined {
    return this.inner.localPath(key);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
