import { BartError } from '../util/errors.js';

/** Placeholder for commands whose issue has not landed yet: a clear error instead of silence. */
export function notImplemented(command: string): never {
  throw new BartError(`${command} is not implemented in this version of pgbart yet`);
}
