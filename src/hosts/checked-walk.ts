// Data host listing: a data directory walk checked where it enters the BART host (untrusted paths).

import { checkPrintable, TreeShapeCheck } from '../util/untrusted-path.js';
import { BartError } from '../util/errors.js';
import type { DataHost, HostEntry } from './data-host.js';

/**
 * Walks `root` on `host` and refuses, with a BartError naming the entry and the host, any entry a
 * hostile or damaged host could use to make the BART host write elsewhere: paths that are absolute,
 * not normalized, hold `..` or control characters, entries below a symlink or a file, impossible
 * sizes or modes. Backups only ever read listings through this.
 */
export async function* checkedWalk(host: DataHost, root: string): AsyncGenerator<HostEntry> {
  const origin = `the listing of ${root} on ${host.description === 'local' ? 'this host' : host.description}`;
  const shape = new TreeShapeCheck(origin, true);
  for await (const entry of host.walk(root)) {
    shape.add(entry.path, entry.type);
    if (entry.type !== 'file' && entry.type !== 'dir' && entry.type !== 'symlink') {
      throw new BartError(`refusing entry "${entry.path}" from ${origin}: unknown type`);
    }
    if (!Number.isSafeInteger(entry.size) || entry.size < 0) {
      throw new BartError(
        `refusing entry "${entry.path}" from ${origin}: size ${String(entry.size)} is not a byte count`,
      );
    }
    if (!Number.isInteger(entry.mode) || entry.mode < 0 || entry.mode > 0o7777) {
      throw new BartError(
        `refusing entry "${entry.path}" from ${origin}: mode ${String(entry.mode)} is not permission bits`,
      );
    }
    if (!Number.isFinite(entry.mtimeMs))
      throw new BartError(`refusing entry "${entry.path}" from ${origin}: bad modification time`);
    // Link targets are stored, never followed by the BART host; tablespace links (pg_tblspc/*) are not
    // backed up at all: locations come from pg_tablespace, checked where they are read.
    if (entry.type === 'symlink') checkPrintable(entry.linkTarget, `the target of symlink "${entry.path}"`, origin);
    yield entry;
  }
}
