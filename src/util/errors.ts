// Errors: BartError, the one error users see, and helpers for thrown values.

/**
 * The one error type pgbart shows to users. Its message is a single line that names the file,
 * line, option or object at fault; the CLI prints it as `ERROR: <message>` and exits non-zero.
 */
export class BartError extends Error {
  /** Process exit code to use when this error ends a command. */
  readonly exitCode: number;

  constructor(message: string, exitCode = 1) {
    super(message);
    this.name = 'BartError';
    this.exitCode = exitCode;
  }
}

/** Narrows an unknown thrown value to a Node system error (with `code`). */
export function isErrnoError(err: unknown): err is NodeJS.ErrnoException {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string';
}

/** Text of any thrown value, for messages. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
