// Configuration types: the validated bart.cfg, global and per-server settings.

import type { Secret } from '../util/secret.js';

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
  /** repository_cipher [pgbart]: `aes-256-gcm` encrypts everything stored in the repository on the BART host. */
  repositoryCipher: 'none' | 'aes-256-gcm';
  /**
   * repository_cipher_pass_file [pgbart]: the file whose first line is the passphrase (private to the BART
   * user); unset: the BART_CIPHER_PASS environment variable.
   */
  repositoryCipherPassFile?: ConfiguredPath;
  /**
   * archive_async [pgbart]: ARCHIVE-PUSH queues the segment durably in the spool and an archiver process
   * pushes it into the repository (src/archive/async-archiver.ts); off: every push is done in the archive_command.
   */
  archiveAsync: boolean;
  /** archive_async_workers [pgbart]: segments the archiver pushes at once. */
  archiveAsyncWorkers: number;
  /**
   * archive_async_queue_max [pgbart]: segments the spool holds at most; ARCHIVE-PUSH fails once it is full,
   * so that with a failing repository WAL piles up in pg_wal (where PostgreSQL keeps it), not in the spool.
   */
  archiveAsyncQueueMax: number;
}

/** repository [pgbart]: where a server's catalog and WAL archive live. */
export type RepositoryConfig = PosixRepositoryConfig | S3RepositoryConfig;

/** `repository = posix` (the default): `backup_path/<server>` and its archive_path on this host. */
export interface PosixRepositoryConfig {
  kind: 'posix';
}

/** `repository = s3`: `s3://<bucket>/<prefix>/<server>` in an S3-compatible object store. */
export interface S3RepositoryConfig {
  kind: 's3';
  /** s3_endpoint: `http(s)://host[:port]`; unset means AWS S3 of {@link region}. */
  endpoint?: string;
  /** s3_region (default us-east-1): the region requests are signed for. */
  region: string;
  /** s3_bucket. */
  bucket: string;
  /** s3_prefix: a clean relative key prefix inside the bucket, or '' (the bucket's top). */
  prefix: string;
  /** s3_uri_style: `path` (`endpoint/bucket/key`) or `host` (`bucket.endpoint/key`). */
  uriStyle: 'path' | 'host';
  /** s3_verify_tls (default enabled): check the store's TLS certificate and host name. */
  verifyTls: boolean;
  /** s3_ca_file: PEM file of the CA(s) to trust instead of the system's. */
  caFile?: string;
  /** s3_key and s3_key_secret; unset means the SDK's chain (AWS_* environment variables, ~/.aws/credentials). */
  credentials?: { accessKeyId: Secret; secretAccessKey: Secret };
  /** `file:line` of the `repository = s3` line, for messages. */
  at: string;
}

/**
 * The repository parameters as written in one section (each with its `file:line`), before a server
 * resolves them: a server section's values override [BART]'s one by one (s3_key and s3_key_secret
 * as a pair).
 */
export interface RepositorySettings {
  repository?: { kind: 'posix' | 's3'; at: string };
  endpoint?: string;
  region?: string;
  bucket?: string;
  prefix?: string;
  uriStyle?: 'path' | 'host';
  verifyTls?: boolean;
  caFile?: string;
  credentials?: { accessKeyId: Secret; secretAccessKey: Secret };
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
  /**
   * spool_path [pgbart]: the local directory of asynchronous archiving's queues (`<spool_path>/<server>`);
   * unset: `backup_path/<server>/archive-spool`.
   */
  spoolPath?: string;
  /**
   * direct_io [pgbart]: write large local files (backups, restored files, archived WAL) past the page cache, with
   * O_DIRECT (default on; off: through the page cache, as most tools do).
   */
  directIo: boolean;
  /** The repository parameters of [BART], inherited by every server (see {@link ServerConfig.repository}). */
  repositoryDefaults: RepositorySettings;
  /**
   * [BART]'s own S3 repository when it says `repository = s3` and names s3_bucket (prefix, no server
   * below it): CHECK-CONFIG checks that bucket before any server uses it.
   */
  s3Repository?: S3RepositoryConfig;
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
  /** Where this server's catalog and WAL archive live (repository and s3_* resolved: server, else [BART], else default). */
  repository: RepositoryConfig;
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
