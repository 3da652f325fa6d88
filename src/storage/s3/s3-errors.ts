// Concept: S3 failures described in one line — what was being done to which object, what went wrong, and what to check.

import { StorageError } from '../storage.js';

/** What a failed S3 request was about, for its message. */
export interface S3ErrorContext {
  /** What was being done: `read`, `write`, `list`, … */
  operation: string;
  /** The object or prefix as people see it: `s3://bucket/root/key`. */
  object: string;
  /** The key relative to the storage root (the StorageError's key). */
  key: string;
  /** The store's address, e.g. `https://s3.example.com`. */
  endpoint: string;
  /** The bucket. */
  bucket: string;
  /** Values that must never appear in a message (the access key id and secret key), if known. */
  secrets?: string[];
}

/** The fields of an SDK or Node error we read (all optional: anything may be thrown). */
interface ErrorShape {
  name?: string;
  code?: string;
  message?: string;
  Code?: string;
  cause?: unknown;
  $metadata?: { httpStatusCode?: number; attempts?: number };
}

const UNTRUSTED_CERT = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
]);

/** The Node error code of `err` or of its causes (the SDK sometimes wraps socket errors). */
function nodeCode(err: ErrorShape, depth = 0): string | undefined {
  if (typeof err.code === 'string') return err.code;
  if (err.cause !== undefined && typeof err.cause === 'object' && err.cause !== null && depth < 5)
    return nodeCode(err.cause as ErrorShape, depth + 1);
  return undefined;
}

/** Why the request failed and what to check, without the object (see {@link describeS3Error}). */
function reason(err: ErrorShape, ctx: S3ErrorContext): string {
  const { endpoint, bucket } = ctx;
  const code = nodeCode(err);
  const status = err.$metadata?.httpStatusCode;
  const attempts = err.$metadata?.attempts;
  const tries = attempts !== undefined && attempts > 1 ? ` (after ${attempts} attempts)` : '';
  const name = err.Code ?? err.name ?? '';

  // No answer: the network, DNS or TLS.
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN')
    return `cannot resolve the host name of ${endpoint} (DNS lookup failed${tries}): check s3_endpoint and this host's DNS`;
  if (code === 'ECONNREFUSED')
    return `${endpoint} refused the connection${tries}: check that the store is running and the host and port of s3_endpoint`;
  if (code === 'EHOSTUNREACH' || code === 'ENETUNREACH')
    return `no network route to ${endpoint} (${code}${tries}): check s3_endpoint and this host's network`;
  if (code !== undefined && UNTRUSTED_CERT.has(code))
    return `the TLS certificate of ${endpoint} is not trusted (${code}: self-signed or signed by an unknown CA): set s3_ca_file to the CA certificate (PEM), or s3_verify_tls = disabled on a network you trust`;
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID')
    return `the TLS certificate of ${endpoint} is not valid for that host name: use in s3_endpoint a name the certificate holds${bucket.includes('.') ? ', or s3_uri_style = path (a bucket name with "." breaks host-style certificates)' : ''}`;
  if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID')
    return `the TLS certificate of ${endpoint} is ${code === 'CERT_HAS_EXPIRED' ? 'expired' : 'not yet valid'}: renew it, or check this host's clock`;
  if (code === 'EPROTO' || code === 'ERR_SSL_WRONG_VERSION_NUMBER' || /wrong version number/i.test(err.message ?? ''))
    return `the TLS handshake with ${endpoint} failed (${code ?? 'protocol error'}): does it serve https on that port? (use http:// in s3_endpoint if it serves plain HTTP)`;
  if (code === 'ETIMEDOUT' || name === 'TimeoutError' || name === 'RequestTimeout')
    return `${endpoint} did not answer in time (timeout${tries}): check the network path to the store and its load`;
  if (code === 'ECONNRESET' || code === 'EPIPE' || /socket hang up/i.test(err.message ?? ''))
    return `the connection to ${endpoint} was cut (${code ?? 'socket hang up'}${tries}): check the store and the network`;

  // Credentials and permissions.
  if (name === 'CredentialsProviderError' || /could not load credentials/i.test(err.message ?? ''))
    return 'no S3 credentials found: set s3_key and s3_key_secret in bart.cfg, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a credentials file (~/.aws/credentials)';
  if (name === 'InvalidAccessKeyId')
    return `${endpoint} does not know the access key (InvalidAccessKeyId, HTTP 403): check s3_key (or AWS_ACCESS_KEY_ID / the credentials file)`;
  if (name === 'SignatureDoesNotMatch')
    return `${endpoint} refused the request signature (SignatureDoesNotMatch, HTTP 403): the secret key is wrong; check s3_key_secret (or AWS_SECRET_ACCESS_KEY / the credentials file)`;
  if (name === 'RequestTimeTooSkewed' || name === 'RequestExpired')
    return `this host's clock differs too much from the store's (${name}): set the clock right (NTP) on the BART host`;
  if (name === 'AccessDenied')
    return `access denied (AccessDenied, HTTP 403): the credentials are valid but may not do this in bucket "${bucket}"; check the user's bucket policy`;
  if (status === 403)
    return `${endpoint} answered 403 Forbidden: check s3_key/s3_key_secret (or the AWS_* credentials) and the user's permissions on bucket "${bucket}"`;

  // The bucket and addressing.
  if (name === 'NoSuchBucket')
    return `bucket "${bucket}" does not exist at ${endpoint} (NoSuchBucket): create it, or correct s3_bucket (or s3_endpoint)`;
  if (name === 'PermanentRedirect' || name === 'AuthorizationHeaderMalformed' || status === 301)
    return `bucket "${bucket}" is not reachable this way (${name || `HTTP ${status}`}): check s3_region (the bucket's region), s3_endpoint and s3_uri_style`;
  if (name === 'BadDigest' || name === 'InvalidDigest')
    return `${endpoint} received other bytes than were sent (${name}: Content-MD5 mismatch): check the network path (a proxy altering data?) and retry`;

  // The store itself.
  if (name === 'SlowDown' || status === 429 || status === 503)
    return `${endpoint} kept asking to slow down (${name || `HTTP ${status}`}${tries}): the store is overloaded; retry later or lower thread_count`;
  if (status !== undefined && status >= 500)
    return `${endpoint} failed (${name || 'error'}, HTTP ${status}${tries}): check the store's health and logs`;

  const detail = (err.message ?? '').replace(/\s+/g, ' ').trim();
  const what = [name, status !== undefined ? `HTTP ${status}` : '', code ?? ''].filter((s) => s !== '' && s !== detail);
  return `${what.length > 0 ? `${what.join(', ')}: ` : ''}${detail || 'unknown error'}`;
}

/**
 * One line for a failed S3 request, as a {@link StorageError}: the operation, the object, why and
 * what to check. Credentials never appear (any of `ctx.secrets` found in the text is masked).
 * A StorageError passes through unchanged.
 */
export function describeS3Error(err: unknown, ctx: S3ErrorContext): StorageError {
  if (err instanceof StorageError) return err;
  const shape: ErrorShape = typeof err === 'object' && err !== null ? (err as ErrorShape) : { message: String(err) };
  let message = `cannot ${ctx.operation} ${ctx.object}: ${reason(shape, ctx)}`;
  for (const secret of ctx.secrets ?? []) if (secret.length >= 4) message = message.split(secret).join('<redacted>');
  const error = new StorageError(message, ctx.key);
  // Keeps the S3 code and HTTP status for callers that branch on them (and for --debug).
  return Object.assign(error, {
    s3Code: shape.Code ?? shape.name,
    httpStatus: shape.$metadata?.httpStatusCode,
    code: nodeCode(shape),
  });
}

/** The S3 error name (`NoSuchKey`, `PreconditionFailed`, …) and HTTP status of an SDK error. */
export function s3ErrorCode(err: unknown): { name: string; status: number | undefined } {
  const shape: ErrorShape = typeof err === 'object' && err !== null ? (err as ErrorShape) : {};
  return { name: shape.Code ?? shape.name ?? '', status: shape.$metadata?.httpStatusCode };
}
