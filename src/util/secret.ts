// Concept: a secret value (an S3 secret key, an access key id) that never prints — logs, JSON and inspect show `<redacted>`.

import { inspect } from 'node:util';

const REDACTED = '<redacted>';

/**
 * Holds a credential so that no accident prints it: string conversion, `JSON.stringify` and
 * `util.inspect` (console.log of a config object, a debug dump) all give `<redacted>`. Only
 * {@link reveal} gives the value, and only the code that hands it to a client library calls it.
 */
export class Secret {
  readonly #value: string;

  constructor(value: string) {
    this.#value = value;
  }

  /** The value itself: pass it to the client library, never to a message. */
  reveal(): string {
    return this.#value;
  }

  toString(): string {
    return REDACTED;
  }

  toJSON(): string {
    return REDACTED;
  }

  [inspect.custom](): string {
    return REDACTED;
  }
}
