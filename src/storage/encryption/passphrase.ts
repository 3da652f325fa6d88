// Concept: where the repository passphrase comes from — repository_cipher_pass_file (private to the BART user) or BART_CIPHER_PASS.

import { open } from 'node:fs/promises';
import { constants } from 'node:fs';
import { BartError, errorMessage } from '../../util/errors.js';

/** Environment variable that may hold the passphrase (never bart.cfg, never argv). */
export const PASSPHRASE_ENV = 'BART_CIPHER_PASS';
/** A passphrase file is small; anything larger is not one. */
const MAX_PASSPHRASE_FILE_BYTES = 4096;

/**
 * Reads the passphrase: from `file` (repository_cipher_pass_file, as `{ path, at }` for messages) when set,
 * else from BART_CIPHER_PASS. The file must be a regular file of the BART user that nobody else can read or
 * write (mode 0600 or 0400); its first line is the passphrase. Errors name the file, never its content.
 */
export async function readPassphrase(file: { path: string; at: string } | undefined): Promise<string> {
  if (file === undefined) {
    const fromEnv = process.env[PASSPHRASE_ENV];
    if (fromEnv === undefined || fromEnv === '')
      throw new BartError(
        `the repository is encrypted but no passphrase is given: set repository_cipher_pass_file in bart.cfg or ${PASSPHRASE_ENV}`,
      );
    return fromEnv;
  }
  let handle;
  try {
    handle = await open(file.path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    throw new BartError(`repository_cipher_pass_file "${file.path}" (${file.at}) cannot be read: ${errorMessage(err)}`);
  }
  try {
    const st = await handle.stat();
    const uid = process.geteuid?.();
    if (!st.isFile())
      throw new BartError(`repository_cipher_pass_file "${file.path}" (${file.at}) is not a regular file`);
    if ((st.mode & 0o077) !== 0)
      throw new BartError(
        `repository_cipher_pass_file "${file.path}" (${file.at}) can be read or written by others (mode ${(st.mode & 0o777).toString(8)}); chmod 600 it`,
      );
    if (uid !== undefined && st.uid !== uid)
      throw new BartError(`repository_cipher_pass_file "${file.path}" (${file.at}) is not owned by the BART user`);
    if (st.size > MAX_PASSPHRASE_FILE_BYTES)
      throw new BartError(`repository_cipher_pass_file "${file.path}" (${file.at}) is too large for a passphrase file`);
    const text = (await handle.readFile('utf8')).split('\n')[0]!.replace(/\r$/, '');
    if (text === '') throw new BartError(`repository_cipher_pass_file "${file.path}" (${file.at}) holds no passphrase`);
    return text;
  } finally {
    await handle.close();
  }
}
