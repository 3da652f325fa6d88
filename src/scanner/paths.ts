import { join } from 'node:path';
import type { BartConfig } from '../config/types.js';

/** Default socket file name when bart_socket_name is not set. */
export const DEFAULT_SOCKET_NAME = 'bart_scanner.sock';

/** Unix socket of the running bart-scanner: bart_socket_directory / (bart_socket_name or default). */
export function scannerSocketPath(config: BartConfig): string {
  return join(config.global.bartSocketDirectory, config.global.bartSocketName ?? DEFAULT_SOCKET_NAME);
}

/** Pid file of the running bart-scanner, next to its socket. */
export function scannerPidPath(config: BartConfig): string {
  return join(config.global.bartSocketDirectory, 'bart_scanner.pid');
}
