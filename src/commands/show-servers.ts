import type { CommandContext } from './context.js';
import { notImplemented } from './not-yet.js';

export async function showServers(_ctx: CommandContext, ..._args: unknown[]): Promise<number> {
  notImplemented('SHOW-SERVERS');
}
