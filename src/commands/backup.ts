import type { CommandContext } from './context.js';
import { notImplemented } from './not-yet.js';

export async function backup(_ctx: CommandContext, ..._args: unknown[]): Promise<number> {
  notImplemented('BACKUP');
}
