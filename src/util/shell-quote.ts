/**
 * Quotes one word for /bin/sh: left as is when it holds only characters the shell never
 * interprets, else single-quoted (an embedded `'` becomes `'\''`).
 */
export function shellQuote(word: string): string {
  if (/^[A-Za-z0-9_.,:/=+@-]+$/.test(word)) return word;
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/**
 * Quotes one word of an archive_command / restore_command: shell-quoted, and `%` doubled, since
 * PostgreSQL would otherwise read it as a %p/%f/%r placeholder.
 */
export function quoteForPostgresCommand(word: string): string {
  return shellQuote(word).replace(/%/g, '%%');
}
