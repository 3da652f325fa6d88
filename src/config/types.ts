// Configuration types: the validated bart.cfg, global and per-server settings.

/** A `user@host` pair as written in bart_host and remote_host. */
export interface UserAtHost {
  user: string;
  host: string;
}

/** How long backups are kept: by count of full backups, by age, or forever. */
export type RetentionPolicy =
  | { kind: 'none' }
  | { kind: 'backups'; count: number }
  | { kind: 'window'; count: number; unit: 'DAYS' | 'WEEKS' | 'MONTHS' };

/** How the WAL a backup needs to be consistent gets into it. */
export type XlogMethod = 'fetch' | 'stream';

/** A path from bart.cfg, with where it was set (`file:line`) for messages about it. */
export interface ConfiguredPath {
  path: string;
  at: string;
}

/**
 * Settings that live in [BART] and may be overridden per server. In a {@link ServerConfig} they
 * are already resolved (server value, else global value, else default).
 */
export interface OverridableSettings {
  retentionPolicy: RetentionPolicy;
  walCompression: boolean;
  copyWalsDuringRestore: boolean;
  xlogMethod: XlogMethod;
  threadCount: number;
  batchSize: number;
  scanInterval: number;
  mbmScanTimeout: number;
  workers: number;
  /**
   * retention_requires_verified_restore [pgbart]: retention never makes obsolete the full backups it
   * still needs to keep the policy's number (or the newest one) of backups that passed VERIFY-RESTORE.
   */
  retentionRequiresVerifiedRestore: boolean;
  /** pg_ctl_path [pgbart]: the pg_ctl VERIFY-RESTORE starts a scratch cluster with. */
  pgCtlPath?: ConfiguredPath;
  /** postgres_bin_path [pgbart]: the directory of the server's binaries (postgres, pg_ctl, pg_amcheck, ...). */
  postgresBinPath?: ConfiguredPath;
}

/** The [BART] section. */
export interface GlobalConfig extends OverridableSettings {
  bartHost: UserAtHost;
  backupPath: string;
  pgBasebackupPath?: string;
  logfile: string;
  scannerLogfile: string;
  /** bart_socket_directory when set; unset means the private default `/tmp/bart-<uid>`. */
  bartSocketDirectory?: string;
  bartSocketName?: string;
}

/** One database server section, with every overridable setting resolved. */
export interface ServerConfig extends OverridableSettings {
  /** Catalog name: the section name in lower case. */
  name: string;
  /** The section name as written. */
  sectionName: string;
  /** Line of the section header, for messages. */
  line: number;
  host: string;
  port: number;
  user: string;
  clusterOwner: string;
  remoteHost?: UserAtHost;
  /** Where archived WAL lands on the BART host. */
  archivePath: string;
  archiveCommand?: string;
  /** `OID=path;OID=path` restore locations of tablespaces. */
  tablespacePath: Map<number, string>;
  allowIncrementalBackups: boolean;
  description?: string;
  backupName?: string;
  /** Which settings were given in this section (not inherited), for SHOW-SERVERS and INIT. */
  explicit: Set<string>;
}

/** A parsed, validated bart.cfg. */
export interface BartConfig {
  /** Absolute path of the file read. */
  path: string;
  global: GlobalConfig;
  /** Servers in file order. */
  servers: ServerConfig[];
}
