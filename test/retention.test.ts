import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  chainRoot,
  evaluateRetention,
  windowStart,
  withDescendants,
  type RetentionBackup,
} from '../src/retention/retention.js';
import { planWalCleanup } from '../src/retention/wal-cleanup.js';
import { retentionNow } from '../src/retention/clock.js';
import { parseRetentionPolicy } from '../src/config/retention-policy.js';
import { BartError } from '../src/util/errors.js';

const DAY = 86_400_000;
const NOW = new Date('2026-03-31T12:00:00Z');
const full = (id: number, daysAgo: number, status: RetentionBackup['status'] = 'active'): RetentionBackup => ({
  id: String(id),
  status,
  startTime: new Date(NOW.getTime() - daysAgo * DAY),
});
const incr = (
  id: number,
  parent: number,
  daysAgo: number,
  status: RetentionBackup['status'] = 'active',
): RetentionBackup => ({ ...full(id, daysAgo, status), parent: String(parent) });
const obsoleted = (changes: { id: string; to: string }[]) =>
  changes
    .filter((c) => c.to === 'obsolete')
    .map((c) => c.id)
    .sort();
const policy = (text: string) => parseRetentionPolicy(text)!;

test('N BACKUPS keeps the newest N active full backups; keep and obsolete ones do not count', () => {
  const backups = [full(1, 10), full(2, 9, 'keep'), full(3, 8), full(4, 7, 'obsolete'), full(5, 6), full(6, 5)];
  assert.deepEqual(obsoleted(evaluateRetention(backups, policy('2 BACKUPS'), NOW)), ['1', '3']);
  assert.deepEqual(obsoleted(evaluateRetention(backups, policy('3'), NOW)), ['1'], 'bare N means backups');
  assert.deepEqual(obsoleted(evaluateRetention(backups, policy('4 backups'), NOW)), []);
  assert.deepEqual(evaluateRetention(backups, policy('none'), NOW), []);
});

test('window policies: days and weeks are exact, months are calendar months', () => {
  const backups = [full(1, 8), full(2, 6.99), full(3, 7.01), full(4, 0)];
  assert.deepEqual(obsoleted(evaluateRetention(backups, policy('7 DAYS'), NOW)), ['1', '3']);
  assert.deepEqual(obsoleted(evaluateRetention(backups, policy('1 WEEKS'), NOW)), ['1', '3']);
  // 31 March minus one month is 28 February (2026 is not a leap year), not 3 March.
  assert.equal(
    windowStart({ kind: 'window', count: 1, unit: 'MONTHS' }, NOW).toISOString(),
    '2026-02-28T12:00:00.000Z',
  );
  assert.equal(
    windowStart({ kind: 'window', count: 13, unit: 'MONTHS' }, NOW).toISOString(),
    '2025-02-28T12:00:00.000Z',
  );
  assert.equal(
    windowStart({ kind: 'window', count: 1, unit: 'MONTHS' }, new Date('2028-03-31T00:00:00Z')).toISOString(),
    '2028-02-29T00:00:00.000Z',
  );
  assert.equal(
    windowStart({ kind: 'window', count: 3, unit: 'MONTHS' }, new Date('2026-01-15T08:30:00Z')).toISOString(),
    '2025-10-15T08:30:00.000Z',
  );
  const monthly = [
    { id: '10', status: 'active' as const, startTime: new Date('2026-02-28T11:59:59Z') },
    { id: '11', status: 'active' as const, startTime: new Date('2026-02-28T12:00:00Z') },
    { id: '12', status: 'keep' as const, startTime: new Date('2020-01-01T00:00:00Z') },
  ];
  assert.deepEqual(obsoleted(evaluateRetention(monthly, policy('1 MONTHS'), NOW)), ['10']);
});

test('incrementals share their full backup fate; orphans become obsolete; in-progress and failed are ignored', () => {
  const backups = [
    full(1, 10),
    incr(2, 1, 9),
    incr(3, 2, 8),
    incr(4, 1, 8.5),
    full(5, 5),
    incr(6, 5, 4),
    full(7, 3, 'keep'),
    incr(8, 7, 2, 'keep'),
    incr(9, 99, 1),
    full(20, 0, 'in progress'),
    full(21, 0, 'failed'),
  ];
  const changes = evaluateRetention(backups, policy('1 BACKUPS'), NOW);
  assert.deepEqual(obsoleted(changes), ['1', '2', '3', '4', '9']);
  assert.match(changes.find((c) => c.id === '3')!.reason, /follows its full backup 1/);
  assert.match(changes.find((c) => c.id === '9')!.reason, /no full backup/);
  // An already obsolete full backup drags an active incremental along even with policy none.
  assert.deepEqual(obsoleted(evaluateRetention([full(1, 1, 'obsolete'), incr(2, 1, 0)], policy('none'), NOW)), ['2']);
  assert.equal(chainRoot(backups, '3')?.id, '1');
  assert.equal(chainRoot(backups, '9'), undefined);
  assert.deepEqual(
    withDescendants(backups, '1').map((b) => b.id),
    ['3', '2', '4', '1'],
    'children before parents',
  );
});

test('PGBART_NOW test clock', () => {
  assert.equal(retentionNow({ PGBART_NOW: '2030-01-02T03:04:05Z' }).toISOString(), '2030-01-02T03:04:05.000Z');
  // Unset, it is the real clock: read between two readings of it (no duration bound, which a busy machine could break).
  const before = Date.now();
  const now = retentionNow({}).getTime();
  assert.ok(before <= now && now <= Date.now(), `retentionNow() = ${now}, read at ${before} or later`);
  assert.throws(
    () => retentionNow({ PGBART_NOW: 'yesterday' }),
    (e: unknown) => e instanceof BartError && /PGBART_NOW/.test(e.message),
  );
});

test('WAL retention keeps everything from the oldest remaining backup start, any timeline', () => {
  const seg = 16 * 1024 * 1024;
  const names = [
    '000000010000000000000001',
    '000000010000000000000002.gz',
    '000000010000000000000003',
    '000000010000000000000003.00000028.backup',
    '000000010000000000000004',
    '000000010000000000000005.partial',
    '00000002.history',
    '000000020000000000000005',
    '000000020000000000000006',
    '00000001_0000000002000028_0000000003000000.mbm',
    '00000001_0000000003000000_0000000004000000.mbm',
    '.000000010000000000000001.gz.tmp-123-abc',
    'README',
  ];
  const plan = planWalCleanup(names, [
    { id: 'b', timeline: 1, startWalFile: '000000010000000000000003', walSegmentSize: seg },
  ]);
  assert.deepEqual(plan.remove, [
    '000000010000000000000001',
    '000000010000000000000002.gz',
    '00000001_0000000002000028_0000000003000000.mbm',
  ]);
  const onTwo = planWalCleanup(names, [
    { id: 'c', timeline: 2, startWalFile: '000000020000000000000006', walSegmentSize: seg },
    { id: 'd', timeline: 2, startWalFile: '000000020000000000000005', walSegmentSize: seg },
  ]);
  assert.ok(onTwo.remove.includes('000000010000000000000004'));
  assert.ok(!onTwo.remove.includes('000000020000000000000005'));
  assert.ok(!onTwo.remove.includes('000000010000000000000005.partial'), 'segment 5 of any timeline stays');
  assert.ok(!onTwo.remove.includes('00000002.history'));
  assert.ok(
    !onTwo.remove.includes('README') && !onTwo.remove.some((n) => n.includes('tmp')),
    "foreign and temp files are not the rule's business",
  );
  const none = planWalCleanup(names, []);
  assert.ok(
    none.remove.includes('000000020000000000000006') && !none.remove.includes('00000002.history'),
    'no backup left: WAL goes, history stays',
  );
  assert.deepEqual(
    planWalCleanup(names, [{ id: 'x', timeline: 0, startWalFile: '', walSegmentSize: seg }]).remove,
    [],
    'unknown start keeps all',
  );
});
