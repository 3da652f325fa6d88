// PostgreSQL settings: archiving settings and role attributes read, ALTER SYSTEM and reload.

import type pg from 'pg';
import { queryValue } from './connection.js';

/** What a server says about WAL archiving, as INIT, CHECK-CONFIG and SHOW-SERVERS need it. */
export interface ArchiveSettings {
  /** Running value: off, on or always. */
  archiveMode: string;
  /** archive_mode in the config files differs from the running one: a restart is needed. */
  archiveModePendingRestart: boolean;
  /** archive_mode as it will be after a restart (the pending value when one is pending). */
  archiveModeAfterRestart: string;
  /** archive_command as SHOW prints it (`(disabled)` while archive_mode is off). */
  archiveCommandShown: string;
  /** archive_command as the config files set it, even while archive_mode is off ('' when unset). */
  archiveCommand: string;
  /** archive_library (PostgreSQL 15+; '' when unset or unsupported). */
  archiveLibrary: string;
  /** wal_level: minimal, replica or logical. */
  walLevel: string;
}

/** The user bart connects as: its role attributes. */
export interface RoleAttributes {
  name: string;
  superuser: boolean;
  replication: boolean;
}

/**
 * Last value a setting has in the configuration files (postgresql.conf, includes, postgresql.auto.conf),
 * read from pg_file_settings (superuser only). Undefined when no file sets it or we may not read it.
 * Rows with an error are kept on purpose: a value that needs a restart shows up as "setting could
 * not be applied", and that pending value is exactly what we want to know.
 */
async function fileSetting(client: pg.Client, name: string): Promise<string | undefined> {
  try {
    const value = await queryValue(
      client,
      'SELECT setting FROM pg_file_settings WHERE name = $1 ORDER BY seqno DESC LIMIT 1',
      [name],
    );
    return value ?? undefined;
  } catch {
    return undefined;
  }
}

/** Reads archive_mode, archive_command, archive_library and wal_level of a connected server. */
export async function readArchiveSettings(client: pg.Client): Promise<ArchiveSettings> {
  const rows = await client.query<{ name: string; setting: string; pending_restart: boolean }>(
    `SELECT name, setting, pending_restart FROM pg_settings
      WHERE name IN ('archive_mode', 'archive_command', 'archive_library', 'wal_level')`,
  );
  const get = (n: string) => rows.rows.find((r) => r.name === n);
  const archiveMode = get('archive_mode')?.setting ?? 'off';
  const pending = get('archive_mode')?.pending_restart === true;
  const archiveCommandShown = get('archive_command')?.setting ?? '';
  // The config files say what the server will run with after a reload/restart; while archive_mode
  // is off PostgreSQL even hides archive_command behind "(disabled)". Fall back to the running
  // values when the files do not set a parameter (or we may not read pg_file_settings).
  const fileCommand = await fileSetting(client, 'archive_command');
  const archiveCommand = fileCommand ?? (archiveCommandShown === '(disabled)' ? '' : archiveCommandShown);
  const archiveModeAfterRestart = (await fileSetting(client, 'archive_mode')) ?? archiveMode;
  return {
    archiveMode,
    archiveModePendingRestart: pending || archiveModeAfterRestart !== archiveMode,
    archiveModeAfterRestart,
    archiveCommandShown,
    archiveCommand,
    archiveLibrary: get('archive_library')?.setting ?? '',
    walLevel: get('wal_level')?.setting ?? 'replica',
  };
}

/** True when archive_mode is on or always. */
export function archivingEnabled(mode: string): boolean {
  return mode === 'on' || mode === 'always';
}

/** Role attributes of the connected user. */
export async function readRoleAttributes(client: pg.Client): Promise<RoleAttributes> {
  const r = await client.query<{ rolname: string; rolsuper: boolean; rolreplication: boolean }>(
    'SELECT rolname, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user',
  );
  const row = r.rows[0];
  return { name: row?.rolname ?? '', superuser: row?.rolsuper === true, replication: row?.rolreplication === true };
}

/** `ALTER SYSTEM SET name = 'value'` with the value safely quoted (ALTER SYSTEM takes no parameters). */
export async function alterSystem(client: pg.Client, name: string, value: string): Promise<void> {
  if (!/^[a-z_]+$/.test(name)) throw new Error(`invalid setting name "${name}"`);
  await client.query(`ALTER SYSTEM SET ${name} = ${client.escapeLiteral(value)}`);
}

/** Asks the postmaster to re-read its configuration files. */
export async function reloadConf(client: pg.Client): Promise<void> {
  await client.query('SELECT pg_reload_conf()');
}
