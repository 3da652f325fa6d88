// Retention: which backups a retention policy marks obsolete, incremental chains following their full backup.

import type { RetentionPolicy } from '../config/types.js';
import type { BackupStatus } from '../catalog/backup-info.js';

/** What retention needs to know about one backup of a server. */
export interface RetentionBackup {
  id: string;
  /** Identifier of the parent backup (incrementals only). */
  parent?: string;
  status: BackupStatus;
  /** Backup start (the identifier's instant): the age the window policies compare. */
  startTime: Date;
  /** Its last VERIFY-RESTORE passed (for retention_requires_verified_restore). */
  verifiedRestore?: boolean;
}

/** A status change retention decided. */
export interface StatusChange {
  id: string;
  from: BackupStatus;
  to: BackupStatus;
  /** Why, for the log: the policy, or the full backup an incremental follows. */
  reason: string;
}

/** Statuses of backups that exist as complete backups in the catalog (not in progress/failed). */
const CATALOGUED: ReadonlySet<BackupStatus> = new Set(['active', 'obsolete', 'keep']);

/**
 * retention_requires_verified_restore: how many of the newest active full backups (newest first)
 * are out of the policy's reach, so that the policy's number of backups that passed VERIFY-RESTORE
 * (N for `N BACKUPS`, one for a window) stays: up to and including the N-th newest verified one
 * (all of them while fewer are verified). A full backup stands for its chain: an incremental of it
 * that passed counts for it.
 */
function verifiedKept(newestFirst: readonly RetentionBackup[], policy: RetentionPolicy): number {
  if (policy.kind === 'none') return 0;
  const wanted = policy.kind === 'backups' ? policy.count : 1;
  let found = 0;
  for (const [i, b] of newestFirst.entries()) {
    if (b.verifiedRestore && ++found === wanted) return i + 1;
  }
  return newestFirst.length;
}

/**
 * The full backup at the root of a backup's chain (itself for a full backup), or undefined when a
 * parent along the way is missing (an orphaned incremental: nothing can restore it).
 */
export function chainRoot<T extends { id: string; parent?: string }>(backups: readonly T[], id: string): T | undefined {
  const byId = new Map(backups.map((b) => [b.id, b]));
  let current = byId.get(id);
  const seen = new Set<string>();
  while (current?.parent !== undefined) {
    if (seen.has(current.id)) return undefined; // a parent loop is damage, not a chain
    seen.add(current.id);
    current = byId.get(current.parent);
  }
  return current;
}

/**
 * The backup and every incremental that depends on it (directly or through other incrementals),
 * ordered so that every child comes before its parent: deleting in this order never leaves an
 * incremental whose parent is already gone.
 */
export function withDescendants<T extends { id: string; parent?: string }>(backups: readonly T[], id: string): T[] {
  return descendantsBy(backups, id, (b) => b);
}

/** {@link withDescendants} for any record that knows its identifier and parent through `link`. */
export function descendantsBy<T>(
  items: readonly T[],
  id: string,
  link: (item: T) => { id: string; parent?: string | undefined },
): T[] {
  const children = new Map<string, T[]>();
  for (const item of items) {
    const parent = link(item).parent;
    if (parent === undefined) continue;
    const list = children.get(parent) ?? [];
    list.push(item);
    children.set(parent, list);
  }
  const out: T[] = [];
  const seen = new Set<string>();
  const visit = (node: T) => {
    const nodeId = link(node).id;
    if (seen.has(nodeId)) return;
    seen.add(nodeId);
    for (const child of children.get(nodeId) ?? []) visit(child);
    out.push(node);
  };
  const start = items.find((item) => link(item).id === id);
  if (start) visit(start);
  return out;
}

/**
 * `now` minus the policy's window: N days or weeks are exact multiples of 24 hours; N months are
 * calendar months in UTC, clamped to the end of a shorter month (31 March − 1 month = 28/29 February).
 */
export function windowStart(policy: Extract<RetentionPolicy, { kind: 'window' }>, now: Date): Date {
  const day = 24 * 60 * 60 * 1000;
  if (policy.unit === 'DAYS') return new Date(now.getTime() - policy.count * day);
  if (policy.unit === 'WEEKS') return new Date(now.getTime() - policy.count * 7 * day);
  const totalMonths = now.getUTCFullYear() * 12 + now.getUTCMonth() - policy.count;
  const year = Math.floor(totalMonths / 12);
  const month = totalMonths - year * 12;
  const lastDay = new Date(Date.UTC(year, month + 1, 0)).getUTCDate();
  return new Date(
    Date.UTC(
      year,
      month,
      Math.min(now.getUTCDate(), lastDay),
      now.getUTCHours(),
      now.getUTCMinutes(),
      now.getUTCSeconds(),
      now.getUTCMilliseconds(),
    ),
  );
}

/**
 * Applies a retention policy (BART's rules, bart-reference §4) and returns the status changes,
 * changing nothing itself:
 * - only active full backups are judged; `keep` ones never become obsolete and are not counted,
 *   obsolete ones are already out;
 * - `N BACKUPS`: the newest N active full backups stay, older active ones become obsolete;
 * - `N DAYS|WEEKS|MONTHS`: active full backups started before now − window become obsolete;
 * - `none`: nothing becomes obsolete by policy;
 * - an incremental shares its full backup's fate: active incrementals of an obsolete full backup
 *   become obsolete, whatever the policy; an incremental whose chain lost its full backup can never
 *   be restored and becomes obsolete too.
 * In-progress and failed backups are ignored (MANAGE -d removes failed ones as leftovers).
 */
export function evaluateRetention(
  backups: readonly RetentionBackup[],
  policy: RetentionPolicy,
  now: Date,
  requireVerified = false,
): StatusChange[] {
  const live = backups.filter((b) => CATALOGUED.has(b.status));
  const fullActive = live.filter((b) => b.parent === undefined && b.status === 'active');
  const newestFirst = [...fullActive].sort(
    (a, b) => b.startTime.getTime() - a.startTime.getTime() || (BigInt(b.id) > BigInt(a.id) ? 1 : -1),
  );
  // The newest full backups that stay whatever the policy says, for retention_requires_verified_restore.
  const spared = requireVerified ? verifiedKept(newestFirst, policy) : 0;
  const fullStatus = new Map<string, BackupStatus>(
    live.filter((b) => b.parent === undefined).map((b) => [b.id, b.status]),
  );
  const changes: StatusChange[] = [];
  const policyText =
    policy.kind === 'none'
      ? 'none'
      : policy.kind === 'backups'
        ? `${policy.count} BACKUPS`
        : `${policy.count} ${policy.unit}`;
  if (policy.kind === 'backups') {
    for (const b of newestFirst.slice(Math.max(policy.count, spared))) {
      changes.push({
        id: b.id,
        from: 'active',
        to: 'obsolete',
        reason: `retention policy ${policyText}: ${policy.count} newer active full backup(s) exist`,
      });
      fullStatus.set(b.id, 'obsolete');
    }
  } else if (policy.kind === 'window') {
    const cutoff = windowStart(policy, now);
    for (const b of newestFirst.slice(spared)) {
      if (b.startTime.getTime() < cutoff.getTime()) {
        changes.push({
          id: b.id,
          from: 'active',
          to: 'obsolete',
          reason: `retention policy ${policyText}: started before ${cutoff.toISOString()}`,
        });
        fullStatus.set(b.id, 'obsolete');
      }
    }
  }
  for (const b of live) {
    if (b.parent === undefined || b.status !== 'active') continue;
    const root = chainRoot(live, b.id);
    if (!root) {
      changes.push({
        id: b.id,
        from: 'active',
        to: 'obsolete',
        reason: 'its chain has no full backup any more (cannot be restored)',
      });
    } else if (fullStatus.get(root.id) === 'obsolete') {
      changes.push({ id: b.id, from: 'active', to: 'obsolete', reason: `follows its full backup ${root.id}` });
    }
  }
  return changes;
}
