// Concept: the repository parameters of bart.cfg (repository, s3_*) — parsed per section, resolved per server.

import { BartError } from '../util/errors.js';
import { Secret } from '../util/secret.js';
import { relativePathProblem } from '../util/untrusted-path.js';
import type { RepositoryConfig, RepositorySettings, S3RepositoryConfig } from './types.js';

/** The parameter names this file owns, all allowed in [BART] and in server sections. */
export const REPOSITORY_PARAMETERS = [
  'repository',
  's3_endpoint',
  's3_region',
  's3_bucket',
  's3_prefix',
  's3_uri_style',
  's3_verify_tls',
  's3_ca_file',
  's3_key',
  's3_key_secret',
] as const;

/** s3_region when none is set: what AWS S3 and most S3-compatible stores accept. */
export const DEFAULT_S3_REGION = 'us-east-1';

/** One `key = value` line of a section. */
interface Entry {
  value: string;
  line: number;
}

/** The section being read, as parse-config gives it. */
interface Section {
  name: string;
  line: number;
  entries: Map<string, Entry>;
}

type At = (line: number) => string;

function invalid(at: At, entry: Entry, key: string, why: string): BartError {
  return new BartError(`${at(entry.line)}: ${key} = "${entry.value}" is invalid: ${why}`);
}

/**
 * The repository parameters written in `section`, checked one by one (each error names its
 * `file:line`), laid over `base` (the [BART] settings, for a server section). s3_key and
 * s3_key_secret go together: a section sets both or neither.
 */
export function parseRepositorySettings(section: Section, base: RepositorySettings, at: At): RepositorySettings {
  const e = section.entries;
  const out: RepositorySettings = { ...base };
  const repository = e.get('repository');
  if (repository) {
    const v = repository.value.toLowerCase();
    if (v !== 'posix' && v !== 's3') throw invalid(at, repository, 'repository', 'allowed values are posix and s3');
    out.repository = { kind: v, at: at(repository.line) };
  }
  const endpoint = e.get('s3_endpoint');
  if (endpoint) out.endpoint = parseEndpoint(endpoint, at);
  const region = e.get('s3_region');
  if (region) {
    if (!/^[a-z0-9][a-z0-9-]{0,62}$/i.test(region.value))
      throw invalid(at, region, 's3_region', 'expected a region name such as us-east-1 (letters, digits, "-")');
    out.region = region.value;
  }
  const bucket = e.get('s3_bucket');
  if (bucket) {
    // S3's naming rules (3 to 63 characters; lower case letters, digits, '.', '-'), widened to the
    // upper case and '_' that older Ceph and MinIO buckets may have.
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$/.test(bucket.value))
      throw invalid(at, bucket, 's3_bucket', 'expected a bucket name: 3 to 63 letters, digits, ".", "-" or "_"');
    out.bucket = bucket.value;
  }
  const prefix = e.get('s3_prefix');
  if (prefix) {
    // '' (the bucket's top) is written as an empty value; anything else is a clean key prefix.
    const problem = prefix.value === '' ? undefined : relativePathProblem(prefix.value);
    if (problem)
      throw invalid(at, prefix, 's3_prefix', `it ${problem}: expected a relative key prefix like "pgbart/prod"`);
    out.prefix = prefix.value;
  }
  const style = e.get('s3_uri_style');
  if (style) {
    const v = style.value.toLowerCase();
    if (v !== 'path' && v !== 'host') throw invalid(at, style, 's3_uri_style', 'allowed values are path and host');
    out.uriStyle = v;
  }
  const verify = e.get('s3_verify_tls');
  if (verify) {
    const v = verify.value.toLowerCase();
    if (v !== 'enabled' && v !== 'disabled')
      throw invalid(at, verify, 's3_verify_tls', 'allowed values are enabled and disabled');
    out.verifyTls = v === 'enabled';
  }
  const ca = e.get('s3_ca_file');
  if (ca) {
    if (!ca.value.startsWith('/'))
      throw new BartError(`${at(ca.line)}: s3_ca_file = "${ca.value}" must be an absolute path`);
    out.caFile = ca.value;
  }
  const key = e.get('s3_key');
  const secret = e.get('s3_key_secret');
  // Never echo these values: a message with them would end up in a logfile or a terminal scrollback.
  for (const [entry, name] of [
    [key, 's3_key'],
    [secret, 's3_key_secret'],
  ] as const) {
    if (entry && (entry.value === '' || /\s/.test(entry.value)))
      throw new BartError(`${at(entry.line)}: ${name} is invalid: it is empty or contains white space`);
  }
  if (key && !secret)
    throw new BartError(
      `${at(key.line)}: s3_key is set without s3_key_secret in [${section.name}]: set both or neither`,
    );
  if (secret && !key)
    throw new BartError(
      `${at(secret.line)}: s3_key_secret is set without s3_key in [${section.name}]: set both or neither`,
    );
  if (key && secret)
    out.credentials = { accessKeyId: new Secret(key.value), secretAccessKey: new Secret(secret.value) };
  return out;
}

/** s3_endpoint: an http or https URL of a host (and port), nothing else. */
function parseEndpoint(entry: Entry, at: At): string {
  let url: URL;
  try {
    url = new URL(entry.value);
  } catch {
    throw invalid(at, entry, 's3_endpoint', 'expected a URL like https://s3.example.com or http://10.0.0.5:7480');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw invalid(at, entry, 's3_endpoint', 'the URL must start with http:// or https://');
  // Credentials go in s3_key/s3_key_secret, where they are never printed; a URL is printed often.
  if (url.username !== '' || url.password !== '')
    throw new BartError(
      `${at(entry.line)}: s3_endpoint must not hold credentials (user:password@): use s3_key and s3_key_secret`,
    );
  if ((url.pathname !== '/' && url.pathname !== '') || url.search !== '' || url.hash !== '')
    throw invalid(at, entry, 's3_endpoint', 'expected only scheme, host and port (the bucket goes in s3_bucket)');
  return url.origin;
}

/**
 * The S3 repository `settings` describe, or undefined when they do not say `repository = s3` or
 * name no bucket. s3_uri_style defaults to `path` when s3_endpoint is set (S3-compatible stores:
 * Ceph, MinIO, an IP address, where bucket host names do not resolve) and to `host` for AWS S3 (no
 * endpoint), which retires path-style addressing.
 */
export function s3RepositoryOf(settings: RepositorySettings): S3RepositoryConfig | undefined {
  if (settings.repository?.kind !== 's3' || settings.bucket === undefined) return undefined;
  return {
    kind: 's3',
    ...(settings.endpoint !== undefined ? { endpoint: settings.endpoint } : {}),
    region: settings.region ?? DEFAULT_S3_REGION,
    bucket: settings.bucket,
    prefix: settings.prefix ?? '',
    uriStyle: settings.uriStyle ?? (settings.endpoint !== undefined ? 'path' : 'host'),
    verifyTls: settings.verifyTls ?? true,
    ...(settings.caFile !== undefined ? { caFile: settings.caFile } : {}),
    ...(settings.credentials !== undefined ? { credentials: settings.credentials } : {}),
    at: settings.repository.at,
  };
}

/** A server's repository from its resolved settings; with `repository = s3`, s3_bucket is required. */
export function resolveRepository(settings: RepositorySettings, section: Section, at: At): RepositoryConfig {
  if (settings.repository?.kind !== 's3') return { kind: 'posix' };
  const s3 = s3RepositoryOf(settings);
  if (s3 === undefined)
    throw new BartError(
      `${at(section.line)}: server [${section.name}] uses repository = s3 (${settings.repository.at}) but no s3_bucket is set: set it in [BART] or in [${section.name}]`,
    );
  return s3;
}
