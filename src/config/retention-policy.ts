// Configuration: retention_policy parsed and formatted (N BACKUPS|DAYS|WEEKS|MONTHS or none).

import type { RetentionPolicy } from './types.js';

/** Parses `N BACKUPS|DAYS|WEEKS|MONTHS`, a bare N (= backups) or `none`; undefined when malformed. */
export function parseRetentionPolicy(text: string): RetentionPolicy | undefined {
  const value = text.trim();
  if (/^none$/i.test(value)) return { kind: 'none' };
  const m = /^(\d+)(?:\s+(BACKUPS|DAYS|WEEKS|MONTHS))?$/i.exec(value);
  if (!m) return undefined;
  const count = Number(m[1]);
  if (!Number.isSafeInteger(count) || count < 1) return undefined;
  const unit = (m[2] ?? 'BACKUPS').toUpperCase();
  if (unit === 'BACKUPS') return { kind: 'backups', count };
  return { kind: 'window', count, unit: unit as 'DAYS' | 'WEEKS' | 'MONTHS' };
}

/** The policy as SHOW-SERVERS prints it (`8 Backups`, `4 Weeks`, `none`). */
export function formatRetentionPolicy(policy: RetentionPolicy): string {
  if (policy.kind === 'none') return 'none';
  const unit = policy.kind === 'backups' ? 'Backups' : policy.unit[0] + policy.unit.slice(1).toLowerCase();
  return `${policy.count} ${unit}`;
}
