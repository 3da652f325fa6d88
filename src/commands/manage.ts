import type { CommandContext } from './context.js';
import { notImplemented } from './not-yet.js';

export async function manage(_ctx: CommandContext, ..._args: unknown[]): Promise<number> {
  notImplemented('MANAGE');
}
