// Concept: the S3 client of a repository — its settings (endpoint, addressing, TLS, credentials, retries) and the SDK loaded on first use.

import { readFile } from 'node:fs/promises';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import type { S3Client } from '@aws-sdk/client-s3';
import type { Secret } from '../../util/secret.js';
import { StorageError } from '../storage.js';

/** Everything an {@link S3Storage} needs to reach its bucket (bart.cfg's s3_* after resolution). */
export interface S3StorageOptions {
  /** The bucket. */
  bucket: string;
  /** Key prefix of the storage root inside the bucket (`<s3_prefix>/<server>`), '' for the bucket's top. */
  root: string;
  /** `http(s)://host[:port]`; undefined means AWS S3 of `region`. */
  endpoint?: string;
  /** Region requests are signed for. */
  region: string;
  /** Path-style addressing (`endpoint/bucket/key`) instead of virtual-host style (`bucket.endpoint/key`). */
  forcePathStyle: boolean;
  /** Check the store's certificate and host name (https). */
  verifyTls: boolean;
  /** PEM file of the CA(s) to trust instead of the system's. */
  caFile?: string;
  /** Access key pair; undefined means the SDK's default chain (AWS_* environment variables, ~/.aws/credentials, …). */
  credentials?: { accessKeyId: Secret; secretAccessKey: Secret };
  /** Bytes a writer buffers per part (default {@link DEFAULT_PART_SIZE}; stores refuse parts under 5 MiB but the last). */
  partSize?: number;
  /** Parts one writer uploads at once (default {@link DEFAULT_PARTS_IN_FLIGHT}). */
  partsInFlight?: number;
  /** Keys a listing asks for per request (default 1000, S3's maximum). */
  pageSize?: number;
  /** Attempts per request, the first included (default {@link DEFAULT_MAX_ATTEMPTS}). */
  maxAttempts?: number;
  /** Milliseconds a socket may stay idle before its request fails (default 120 s; tests make it short). */
  socketTimeoutMs?: number;
}

/** Default part size: 16 MiB a part, 80 MiB of buffers per writer at most with 4 parts in flight. */
export const DEFAULT_PART_SIZE = 16 * 1024 * 1024;
/** Default number of parts one writer uploads in parallel. */
export const DEFAULT_PARTS_IN_FLIGHT = 4;
/** Default attempts per request: retried with exponential backoff on 5xx, throttling and connection errors. */
export const DEFAULT_MAX_ATTEMPTS = 5;
/** Sockets kept per store: several writers (thread_count) with their parts in flight, plus parallel reads. */
const MAX_SOCKETS = 64;
/** Time to set up a TCP (and TLS) connection before the attempt counts as failed. */
const CONNECTION_TIMEOUT_MS = 10_000;
/** A socket idle this long (no byte either way) fails its request: a store that stopped answering. */
const SOCKET_TIMEOUT_MS = 120_000;

/** The SDK module, loaded on first use: it takes about a second to load, and most bart commands never touch S3. */
export type S3Sdk = typeof import('@aws-sdk/client-s3');

/** A live client and the SDK module its commands come from. */
export interface S3Connection {
  sdk: S3Sdk;
  client: S3Client;
}

/** What people see as the store's address: the endpoint, or AWS's for the region. */
export function endpointName(options: S3StorageOptions): string {
  return options.endpoint ?? `https://s3.${options.region}.amazonaws.com`;
}

/**
 * Builds the client. Checksums: only where an operation requires one (`WHEN_REQUIRED`), because
 * several S3-compatible stores (radosgw) neither verify `x-amz-checksum-*` nor accept the SDK's
 * streaming-checksum encoding; integrity comes from the `Content-MD5` we send on every upload, which
 * every store verifies. Retries: the SDK's standard strategy (exponential backoff with jitter on
 * 5xx, throttling, timeouts and connection resets/refusals).
 */
export async function connectS3(options: S3StorageOptions, location: string): Promise<S3Connection> {
  let ca: Buffer | undefined;
  if (options.caFile !== undefined) {
    try {
      ca = await readFile(options.caFile);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? String(err);
      throw new StorageError(`${location}: cannot read s3_ca_file "${options.caFile}" (${code})`, '');
    }
  }
  // The SDK warns once per process, on stderr, that it will need Node 22 from 2027 on: eight lines
  // in every archive_command's output and after each one-line error. The project states its Node
  // version in package.json; the warning tells a DBA nothing they can act on.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const [sdk, { NodeHttpHandler }] = await Promise.all([
    import('@aws-sdk/client-s3'),
    import('@smithy/node-http-handler'),
  ]);
  const agentOptions = { keepAlive: true, maxSockets: MAX_SOCKETS };
  const requestHandler = new NodeHttpHandler({
    connectionTimeout: CONNECTION_TIMEOUT_MS,
    socketTimeout: options.socketTimeoutMs ?? SOCKET_TIMEOUT_MS,
    httpAgent: new HttpAgent(agentOptions),
    httpsAgent: new HttpsAgent({
      ...agentOptions,
      rejectUnauthorized: options.verifyTls,
      ...(ca !== undefined ? { ca } : {}),
    }),
  });
  const credentials = options.credentials;
  const client = new sdk.S3Client({
    region: options.region,
    ...(options.endpoint !== undefined ? { endpoint: options.endpoint } : {}),
    forcePathStyle: options.forcePathStyle,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS,
    requestHandler,
    ...(credentials !== undefined
      ? {
          credentials: {
            accessKeyId: credentials.accessKeyId.reveal(),
            secretAccessKey: credentials.secretAccessKey.reveal(),
          },
        }
      : {}),
  });
  return { sdk, client };
}
