// Shell quoting: words quoted for /bin/sh and for archive_command and restore_command.

/**
 * Quotes one word for /bin/sh: left as is when it holds only characters the shell never
 * interprets, else single-quoted (an embedded `'` becomes `'\''`).
 */
export function shellQuote(word: string): string {
  if (/^[A-Za-z0-9_.,:/=+@-]+$/.test(word)) return word;
  return singleQuote(word);
}

/**
 * Single-quotes one word for /bin/sh even when it would not need it (an embedded `'` becomes
 * `'\''`): for text written into files people read, where a quoted path reads as one.
 */
export function singleQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/**
 * Quotes one word of an archive_command / restore_command: shell-quoted, and `%` doubled, since
 * PostgreSQL would otherwise read it as a %p/%f/%r placeholder.
 */
export function quoteForPostgresCommand(word: string): string {
  return shellQuote(word).replace(/%/g, '%%');
}
